//! Compiles [`BlockRule`]s into the contents of the kernel block maps.
//!
//! Every key holds at most [`SLOTS`] slots; each slot carries one rule's index, agent scope,
//! hold flag, kinds and up to [`SLOT_PORTS`] port ranges. An LPM trie lookup returns only the
//! most specific prefix, so every prefix entry also carries the slots of the prefixes that
//! cover it. What does not fit is refused with a reason; the caller enforces it in userspace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use oknek_event::Kind;

use crate::layout::{
    BlockSlot, BlockValue, InodeKey, NetKeyData, SLOT_HOLD, SLOT_PORTS, SLOT_USED, SLOTS,
};
use crate::{BlockRule, RuleRefusal, kernel_dev};

/// The four block maps' intended contents.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompiledRules {
    pub exes: BTreeMap<InodeKey, BlockValue>,
    pub files: BTreeMap<InodeKey, BlockValue>,
    pub dirs: BTreeMap<InodeKey, BlockValue>,
    /// (prefix length in bits including the 32-bit family header, key data).
    pub nets: BTreeMap<(u32, NetKeyData), BlockValue>,
}

const KERNEL_KINDS: [Kind; 5] = [
    Kind::Exec,
    Kind::Open,
    Kind::Connect,
    Kind::Send,
    Kind::Watch,
];

fn kind_bits(kinds: &[Kind], allowed: &[Kind]) -> u8 {
    kinds
        .iter()
        .filter(|k| allowed.contains(k))
        .fold(0u8, |bits, k| bits | (1u8 << k.index()))
}

fn base_slot(rule: &BlockRule, kinds: u8) -> BlockSlot {
    BlockSlot {
        agents: rule.agents,
        rule_index: rule.rule_index,
        flags: SLOT_USED | if rule.hold { SLOT_HOLD } else { 0 },
        kinds,
        ..BlockSlot::default()
    }
}

/// One slot per chunk of up to SLOT_PORTS port ranges (one slot with no ranges = any port).
fn net_slots(rule: &BlockRule, kinds: u8, ports: &[(u16, u16)]) -> Vec<BlockSlot> {
    if ports.is_empty() {
        return vec![base_slot(rule, kinds)];
    }
    ports
        .chunks(SLOT_PORTS)
        .map(|chunk| {
            let mut slot = base_slot(rule, kinds);
            slot.nports = chunk.len() as u16;
            for (i, &(lo, hi)) in chunk.iter().enumerate() {
                slot.port_lo[i] = lo.min(hi);
                slot.port_hi[i] = lo.max(hi);
            }
            slot
        })
        .collect()
}

pub fn inode_key(st_dev: u64, ino: u64) -> InodeKey {
    InodeKey {
        dev: kernel_dev(st_dev),
        _pad: 0,
        ino,
    }
}

/// (family byte, address bytes, address bits) of an IP address.
fn net_key(addr: IpAddr, prefix_len: u8) -> Result<(u32, NetKeyData), String> {
    let (family, octets, bits): (u8, Vec<u8>, u8) = match addr {
        IpAddr::V4(a) => (2, a.octets().to_vec(), 32),
        IpAddr::V6(a) => (10, a.octets().to_vec(), 128),
    };
    if prefix_len > bits {
        return Err(format!(
            "prefix length /{prefix_len} is longer than the address ({bits} bits)"
        ));
    }
    let mut data = NetKeyData {
        family,
        ..NetKeyData::default()
    };
    // Clear host bits so equal prefixes compare equal.
    for (i, byte) in octets.iter().enumerate() {
        let keep = (prefix_len as i32 - 8 * i as i32).clamp(0, 8) as u32;
        let mask = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        data.addr[i] = byte & mask;
    }
    Ok((32 + prefix_len as u32, data))
}

/// True when prefix `outer` contains prefix `inner` (same family, shorter or equal length).
fn covers(outer: &(u32, NetKeyData), inner: &(u32, NetKeyData)) -> bool {
    if outer.1.family != inner.1.family || outer.0 > inner.0 {
        return false;
    }
    let bits = outer.0 - 32;
    (0..bits).all(|bit| {
        let (byte, shift) = ((bit / 8) as usize, 7 - (bit % 8));
        (outer.1.addr[byte] >> shift) & 1 == (inner.1.addr[byte] >> shift) & 1
    })
}

/// Adds slots to a key's value; slots that do not fit are refused.
fn place(
    value: &mut Vec<BlockSlot>,
    slots: &[BlockSlot],
    what: &str,
    refusals: &mut Vec<RuleRefusal>,
) {
    for slot in slots {
        if value.contains(slot) {
            continue;
        }
        if value.len() == SLOTS {
            refusals.push(RuleRefusal {
                rule_index: slot.rule_index,
                reason: format!(
                    "{what}: more than {SLOTS} rule slots on one kernel map entry; enforced in userspace only"
                ),
            });
        } else {
            value.push(*slot);
        }
    }
}

fn to_value(slots: &[BlockSlot]) -> BlockValue {
    let mut value = BlockValue::default();
    value.slots[..slots.len()].copy_from_slice(slots);
    value
}

pub fn compile(rules: &[BlockRule]) -> (CompiledRules, Vec<RuleRefusal>) {
    let mut refusals = Vec::new();
    let mut exes: BTreeMap<InodeKey, Vec<BlockSlot>> = BTreeMap::new();
    let mut files: BTreeMap<InodeKey, Vec<BlockSlot>> = BTreeMap::new();
    let mut dirs: BTreeMap<InodeKey, Vec<BlockSlot>> = BTreeMap::new();
    let mut nets: Vec<((u32, NetKeyData), Vec<BlockSlot>)> = Vec::new();

    for rule in rules {
        if !rule.kinds.iter().any(|k| KERNEL_KINDS.contains(k)) {
            refusals.push(RuleRefusal {
                rule_index: rule.rule_index,
                reason: "no kind of this rule is enforced in the kernel".to_owned(),
            });
            continue;
        }
        let exec_bits = kind_bits(&rule.kinds, &[Kind::Exec]);
        let file_bits = kind_bits(&rule.kinds, &[Kind::Open, Kind::Watch]);
        let net_bits = kind_bits(&rule.kinds, &[Kind::Connect, Kind::Send]);
        if exec_bits != 0 {
            for &(dev, ino) in &rule.exes {
                let key = inode_key(dev, ino);
                let what = format!("executable inode {}:{ino}", key.dev);
                let slot = base_slot(rule, exec_bits);
                place(exes.entry(key).or_default(), &[slot], &what, &mut refusals);
            }
        }
        if file_bits != 0 {
            for (map, entries, label) in [
                (&mut files, &rule.files, "file"),
                (&mut dirs, &rule.dirs, "directory"),
            ] {
                for &(dev, ino) in entries {
                    let key = inode_key(dev, ino);
                    let what = format!("{label} inode {}:{ino}", key.dev);
                    let slot = base_slot(rule, file_bits);
                    place(map.entry(key).or_default(), &[slot], &what, &mut refusals);
                }
            }
        }
        if net_bits != 0 {
            for entry in &rule.nets {
                let key = match net_key(entry.addr, entry.prefix_len) {
                    Ok(key) => key,
                    Err(reason) => {
                        refusals.push(RuleRefusal {
                            rule_index: rule.rule_index,
                            reason: format!("{}/{}: {reason}", entry.addr, entry.prefix_len),
                        });
                        continue;
                    }
                };
                let slots = net_slots(rule, net_bits, &entry.ports);
                let what = format!("network {}/{}", entry.addr, entry.prefix_len);
                match nets.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, value)) => place(value, &slots, &what, &mut refusals),
                    None => {
                        let mut value = Vec::new();
                        place(&mut value, &slots, &what, &mut refusals);
                        nets.push((key, value));
                    }
                }
            }
        }
    }

    // Merge covering prefixes into more specific entries, most specific outer prefix first so
    // the nearest rules win the slots when they overflow.
    let own: Vec<((u32, NetKeyData), Vec<BlockSlot>)> = nets.clone();
    for (key, value) in nets.iter_mut() {
        let mut outers: Vec<&((u32, NetKeyData), Vec<BlockSlot>)> = own
            .iter()
            .filter(|(outer, _)| outer != key && covers(outer, key))
            .collect();
        outers.sort_by_key(|outer| std::cmp::Reverse(outer.0.0));
        for (outer, slots) in outers {
            let what = format!(
                "network prefix /{} inside /{} of another rule",
                key.0 - 32,
                outer.0 - 32
            );
            place(value, slots, &what, &mut refusals);
        }
    }

    let compiled = CompiledRules {
        exes: exes.iter().map(|(k, v)| (*k, to_value(v))).collect(),
        files: files.iter().map(|(k, v)| (*k, to_value(v))).collect(),
        dirs: dirs.iter().map(|(k, v)| (*k, to_value(v))).collect(),
        nets: nets.iter().map(|(k, v)| (*k, to_value(v))).collect(),
    };
    refusals.sort_by(|a, b| (a.rule_index, &a.reason).cmp(&(b.rule_index, &b.reason)));
    refusals.dedup();
    (compiled, refusals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetEntry;

    fn net_rule(rule_index: u32, addr: &str, prefix_len: u8, ports: Vec<(u16, u16)>) -> BlockRule {
        BlockRule {
            rule_index,
            kinds: vec![Kind::Connect],
            agents: 0,
            hold: false,
            files: vec![],
            dirs: vec![],
            exes: vec![],
            nets: vec![NetEntry {
                addr: addr.parse().unwrap(),
                prefix_len,
                ports,
            }],
        }
    }

    #[test]
    fn covering_prefixes_merge_into_specific_entries() {
        let rules = [
            net_rule(1, "10.0.0.0", 8, vec![(443, 443)]),
            net_rule(2, "10.1.2.3", 16, vec![]),
        ];
        let (compiled, refusals) = compile(&rules);
        assert!(refusals.is_empty());
        assert_eq!(compiled.nets.len(), 2);
        let (_, specific) = compiled
            .nets
            .iter()
            .find(|((len, _), _)| *len == 48)
            .unwrap();
        let indexes: Vec<u32> = specific
            .slots
            .iter()
            .filter(|s| s.flags != 0)
            .map(|s| s.rule_index)
            .collect();
        assert_eq!(indexes, [2, 1]);
        let ((_, data), _) = compiled
            .nets
            .iter()
            .find(|((len, _), _)| *len == 48)
            .unwrap();
        assert_eq!(&data.addr[..4], &[10, 1, 0, 0], "host bits are cleared");
    }

    #[test]
    fn overflowing_slots_are_refused_with_a_reason() {
        let rules: Vec<BlockRule> = (0..6)
            .map(|i| net_rule(i, "192.0.2.1", 32, vec![]))
            .collect();
        let (compiled, refusals) = compile(&rules);
        assert_eq!(compiled.nets.len(), 1);
        assert_eq!(
            refusals.iter().map(|r| r.rule_index).collect::<Vec<_>>(),
            [4, 5]
        );
        assert!(refusals[0].reason.contains("userspace only"));
    }

    #[test]
    fn many_port_ranges_take_several_slots() {
        let ports: Vec<(u16, u16)> = (1..=6).map(|p| (p * 100, p * 100 + 9)).collect();
        let (compiled, refusals) = compile(&[net_rule(7, "::1", 128, ports)]);
        assert!(refusals.is_empty());
        let value = compiled.nets.values().next().unwrap();
        assert_eq!(value.slots[0].nports, 4);
        assert_eq!(value.slots[1].nports, 2);
        assert_eq!(value.slots[2].flags, 0);
    }

    #[test]
    fn file_rules_fill_inode_maps_and_model_rules_are_refused() {
        let rule = BlockRule {
            rule_index: 3,
            kinds: vec![Kind::Open, Kind::Watch],
            agents: 0b10,
            hold: true,
            files: vec![(0x0801, 12)],
            dirs: vec![(0x0801, 2)],
            exes: vec![(0x0801, 99)],
            nets: vec![],
        };
        let model = BlockRule {
            rule_index: 4,
            kinds: vec![Kind::ModelCall],
            ..rule.clone()
        };
        let (compiled, refusals) = compile(&[rule, model]);
        assert!(compiled.exes.is_empty(), "exes only count for exec rules");
        let slot = compiled.files[&inode_key(0x0801, 12)].slots[0];
        assert_eq!(slot.kinds, 0b1_0010);
        assert_eq!(slot.flags, SLOT_USED | SLOT_HOLD);
        assert_eq!(slot.agents, 0b10);
        assert_eq!(compiled.dirs.len(), 1);
        assert_eq!(refusals.len(), 1);
        assert_eq!(refusals[0].rule_index, 4);
    }

    #[test]
    fn bad_prefix_lengths_are_refused() {
        let (_, refusals) = compile(&[net_rule(1, "127.0.0.1", 33, vec![])]);
        assert_eq!(refusals.len(), 1);
    }
}
