// SPDX-License-Identifier: GPL-2.0
/* oknek's kernel probes: agent tracking, observation and in-kernel enforcement.
 *
 * Every program starts with one lookup of the current tgid in agent_tasks and returns at once for
 * processes that are not agents. Block maps are written by userspace (src/rules.rs). */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "kernel_types.h"
#include "oknek_event.h"

#define EPERM 1
#define SIGSTOP 19
#define AF_INET 2
#define AF_INET6 10
#define DIR_WALK_DEPTH 32
#define SEND_IOV_MAX 8

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* tgid */
	__type(value, struct oknek_task);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent_tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct oknek_inode_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent_exes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} agent_uids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct oknek_inode_key);
	__type(value, struct oknek_block_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} block_exes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct oknek_inode_key);
	__type(value, struct oknek_block_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} block_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct oknek_inode_key);
	__type(value, struct oknek_block_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} block_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__type(key, struct oknek_net_key);
	__type(value, struct oknek_block_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} block_nets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct oknek_settings);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct oknek_meta);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} meta SEC(".maps");

/* Threads whose blocked socket call must stop on return (cgroup programs cannot signal). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);   /* pid (thread id) */
	__type(value, __u32); /* rule index */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hold_pending SEC(".maps");

/* Model providers and their policy (src/models.rs writes them). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct oknek_provider_key);
	__type(value, struct oknek_provider);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} providers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OKNEK_MAX_PROVIDERS);
	__type(key, __u32);
	__type(value, struct oknek_model_policy);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} model_policy SEC(".maps");

/* Quota buckets: calls counted here, credit refilled by userspace (see oknek_event.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct oknek_quota_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} quota_used SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct oknek_quota_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} quota_credit SEC(".maps");

static __always_inline struct oknek_task *current_agent(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return bpf_map_lookup_elem(&agent_tasks, &tgid);
}

static __always_inline int observing(void)
{
	__u32 zero = 0;
	struct oknek_settings *s = bpf_map_lookup_elem(&settings, &zero);
	return s && s->observe;
}

static __always_inline struct oknek_event *reserve(__u32 kind, __u32 agent_id)
{
	struct oknek_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);
		if (n)
			*n += 1;
		return 0;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->hdr.kind = kind;
	e->hdr.flags = 0;
	e->hdr.pid = (__u32)pid_tgid;
	e->hdr.tgid = pid_tgid >> 32;
	e->hdr.uid = (__u32)bpf_get_current_uid_gid();
	e->hdr.agent_id = agent_id;
	e->hdr.rule_index = 0;
	e->hdr.hook = OKNEK_HOOK_TRACEPOINT;
	e->hdr.cgroup_id = bpf_get_current_cgroup_id();
	e->hdr.ktime_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));
	return e;
}

/* A slot applies when it is in use, covers the kind and the agent, and (for network slots) the
 * port. Returns the slot index or -1. */
static __always_inline int match_slot(const struct oknek_block_value *v, __u32 kind, __u32 agent_id,
				      int check_port, __u16 port)
{
	for (int i = 0; i < OKNEK_SLOTS; i++) {
		const struct oknek_block_slot *s = &v->slots[i];
		if (!(s->flags & OKNEK_SLOT_USED) || !(s->kinds & (1u << kind)))
			continue;
		if (s->agents && (agent_id >= 64 || !(s->agents & (1ull << agent_id))))
			continue;
		if (check_port && s->nports) {
			int hit = 0;
			for (int p = 0; p < OKNEK_SLOT_PORTS; p++) {
				if (p < s->nports && port >= s->port_lo[p] && port <= s->port_hi[p])
					hit = 1;
			}
			if (!hit)
				continue;
		}
		return i;
	}
	return -1;
}

static __always_inline void inode_key_of(struct inode *inode, struct oknek_inode_key *key)
{
	key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	key->_pad = 0;
	key->ino = BPF_CORE_READ(inode, i_ino);
}

/* ---- agent tracking ---------------------------------------------------------------------- */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(track_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct oknek_task *known = bpf_map_lookup_elem(&agent_tasks, &tgid);
	__u32 agent_id;
	struct oknek_inode_key key = {};
	struct inode *inode = BPF_CORE_READ(bprm, file, f_inode);
	inode_key_of(inode, &key);

	if (known) {
		agent_id = known->agent_id;
		/* The process now runs another executable: another caller for quotas. */
		known->exe_dev = key.dev;
		known->exe_ino = key.ino;
	} else {
		__u32 *hit = bpf_map_lookup_elem(&agent_exes, &key);
		if (!hit) {
			__u64 cgroup_id = bpf_get_current_cgroup_id();
			hit = bpf_map_lookup_elem(&agent_cgroups, &cgroup_id);
		}
		if (!hit) {
			__u32 uid = (__u32)bpf_get_current_uid_gid();
			hit = bpf_map_lookup_elem(&agent_uids, &uid);
		}
		if (!hit)
			return 0;
		agent_id = *hit;
		struct oknek_task task_value = {
			.agent_id = agent_id,
			.exe_dev = key.dev,
			.exe_ino = key.ino,
		};
		bpf_map_update_elem(&agent_tasks, &tgid, &task_value, BPF_ANY);
	}
	if (!observing())
		return 0;

	struct oknek_event *e = reserve(OKNEK_KIND_EXEC, agent_id);
	if (!e)
		return 0;
	e->exec.dev = key.dev;
	e->exec.ino = key.ino;
	e->exec.exec_flags = 0;
	e->exec._pad = 0;
	const char *filename = BPF_CORE_READ(bprm, filename);
	if (bpf_probe_read_kernel_str(e->exec.path, sizeof(e->exec.path), filename) < 0)
		e->exec.path[0] = 0;
	/* The new image's mm is installed: its argument area is the argv just passed to execve. */
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long start = BPF_CORE_READ(mm, arg_start);
	unsigned long end = BPF_CORE_READ(mm, arg_end);
	unsigned long len = end > start ? end - start : 0;
	if (len >= OKNEK_ARGV_LEN) {
		len = OKNEK_ARGV_LEN - 1;
		e->exec.exec_flags |= OKNEK_EXEC_ARGV_TRUNCATED;
	}
	len &= OKNEK_ARGV_LEN - 1;
	if (len && bpf_probe_read_user(e->exec.argv, len, (void *)start) == 0)
		e->exec.argv_len = len;
	else
		e->exec.argv_len = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(track_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 parent_tgid = BPF_CORE_READ(parent, tgid);
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	if (parent_tgid == child_tgid) /* a new thread, not a new process */
		return 0;
	struct oknek_task *parent_task = bpf_map_lookup_elem(&agent_tasks, &parent_tgid);
	if (!parent_task)
		return 0;
	struct oknek_task child_task = *parent_task;
	bpf_map_update_elem(&agent_tasks, &child_tgid, &child_task, BPF_ANY);
	return 0;
}

/* Drop the process only when its last thread exits: do_exit() decrements signal->live before
 * this tracepoint, so live == 0 means the whole thread group is gone. Dropping on the group
 * leader's exit instead would untrack a process whose leader called pthread_exit() while other
 * threads keep running. */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(track_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (!bpf_map_lookup_elem(&agent_tasks, &tgid))
		return 0;
	int live = BPF_CORE_READ(task, signal, live.counter);
	if (live == 0)
		bpf_map_delete_elem(&agent_tasks, &tgid);
	return 0;
}

/* ---- observation (syscall tracepoints) --------------------------------------------------- */

static __always_inline void observe_open(const char *upath, __u32 flags, __u32 mode)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return;
	struct oknek_event *e = reserve(OKNEK_KIND_OPEN, agent->agent_id);
	if (!e)
		return;
	e->open.ino = 0;
	e->open.dev = 0;
	e->open.flags = flags;
	e->open.mode = mode;
	e->open._pad = 0;
	if (bpf_probe_read_user_str(e->open.path, sizeof(e->open.path), upath) < 0)
		e->open.path[0] = 0;
	bpf_ringbuf_submit(e, 0);
}

SEC("tracepoint/syscalls/sys_enter_open")
int observe_open_legacy(struct syscall_enter_ctx *ctx)
{
	observe_open((const char *)ctx->args[0], ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int observe_openat(struct syscall_enter_ctx *ctx)
{
	observe_open((const char *)ctx->args[1], ctx->args[2], ctx->args[3]);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat2")
int observe_openat2(struct syscall_enter_ctx *ctx)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	struct user_open_how how = {};
	bpf_probe_read_user(&how, sizeof(how), (void *)ctx->args[2]);
	observe_open((const char *)ctx->args[1], how.flags, how.mode);
	return 0;
}

static __always_inline void read_user_sockaddr(struct oknek_net *net, const void *uaddr, __u32 len)
{
	__u8 raw[28] = {};
	net->family = 0;
	net->port = 0;
	if (!uaddr || len < 8)
		return;
	if (len > sizeof(raw))
		len = sizeof(raw);
	if (bpf_probe_read_user(raw, sizeof(raw), uaddr) < 0 &&
	    bpf_probe_read_user(raw, 16, uaddr) < 0)
		return;
	__u16 family = raw[0] | (raw[1] << 8);
	if (family == AF_INET) {
		net->family = AF_INET;
		net->port = (raw[2] << 8) | raw[3];
		__builtin_memcpy(net->addr, &raw[4], 4);
	} else if (family == AF_INET6 && len >= 24) {
		net->family = AF_INET6;
		net->port = (raw[2] << 8) | raw[3];
		__builtin_memcpy(net->addr, &raw[8], 16);
	}
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int observe_sendto(struct syscall_enter_ctx *ctx)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	struct oknek_event *e = reserve(OKNEK_KIND_SEND, agent->agent_id);
	if (!e)
		return 0;
	__builtin_memset(&e->net, 0, sizeof(e->net));
	e->net.bytes = ctx->args[2];
	read_user_sockaddr(&e->net, (const void *)ctx->args[4], ctx->args[5]);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int observe_sendmsg(struct syscall_enter_ctx *ctx)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	struct user_msghdr msg = {};
	if (bpf_probe_read_user(&msg, sizeof(msg), (void *)ctx->args[1]) < 0)
		return 0;
	struct oknek_event *e = reserve(OKNEK_KIND_SEND, agent->agent_id);
	if (!e)
		return 0;
	__builtin_memset(&e->net, 0, sizeof(e->net));
	__u64 bytes = 0;
	for (int i = 0; i < SEND_IOV_MAX; i++) {
		struct user_iovec iov = {};
		if (i >= msg.msg_iovlen)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), &msg.msg_iov[i]) < 0)
			break;
		bytes += iov.iov_len;
	}
	e->net.bytes = bytes;
	read_user_sockaddr(&e->net, msg.msg_name, msg.msg_namelen);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Used only when no enforcement hook is attached to report connects. */
SEC("tracepoint/syscalls/sys_enter_connect")
int observe_connect(struct syscall_enter_ctx *ctx)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	struct oknek_event *e = reserve(OKNEK_KIND_CONNECT, agent->agent_id);
	if (!e)
		return 0;
	__builtin_memset(&e->net, 0, sizeof(e->net));
	read_user_sockaddr(&e->net, (const void *)ctx->args[1], ctx->args[2]);
	if (e->net.family == 0) {
		bpf_ringbuf_discard(e, 0);
		return 0;
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_inotify_add_watch")
int observe_watch(struct syscall_enter_ctx *ctx)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	struct oknek_event *e = reserve(OKNEK_KIND_WATCH, agent->agent_id);
	if (!e)
		return 0;
	e->watch.ino = 0;
	e->watch.dev = 0;
	e->watch.mask = ctx->args[2];
	if (bpf_probe_read_user_str(e->watch.path, sizeof(e->watch.path), (const char *)ctx->args[1]) < 0)
		e->watch.path[0] = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* ---- enforcement: BPF LSM ---------------------------------------------------------------- */

static __always_inline const struct oknek_block_slot *
file_block(struct dentry *dentry, struct inode *inode, __u32 kind, __u32 agent_id,
	   struct oknek_inode_key *key)
{
	struct oknek_block_value *v;
	int slot;
	inode_key_of(inode, key);
	v = bpf_map_lookup_elem(&block_files, key);
	if (v) {
		slot = match_slot(v, kind, agent_id, 0, 0);
		if (slot >= 0 && slot < OKNEK_SLOTS)
			return &v->slots[slot];
	}
	/* The object itself (a blocked directory opened as such) and its ancestors, within its
	 * filesystem: a mount point ends the walk. */
	for (int depth = 0; depth < DIR_WALK_DEPTH; depth++) {
		struct oknek_inode_key dkey = {};
		struct inode *dinode = BPF_CORE_READ(dentry, d_inode);
		if (dinode) {
			inode_key_of(dinode, &dkey);
			v = bpf_map_lookup_elem(&block_dirs, &dkey);
			if (v) {
				slot = match_slot(v, kind, agent_id, 0, 0);
				if (slot >= 0 && slot < OKNEK_SLOTS)
					return &v->slots[slot];
			}
		}
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		if (!parent || parent == dentry)
			break;
		dentry = parent;
	}
	return 0;
}

static __always_inline void emit_file_block(__u32 kind, __u32 agent_id,
					    const struct oknek_block_slot *slot,
					    const struct oknek_inode_key *key, struct dentry *dentry,
					    __u32 flags_or_mask, __u32 held)
{
	struct oknek_event *e = reserve(kind, agent_id);
	if (!e)
		return;
	e->hdr.flags = OKNEK_FLAG_BLOCKED | (held ? OKNEK_FLAG_HELD : 0);
	e->hdr.rule_index = slot->rule_index;
	e->hdr.hook = OKNEK_HOOK_LSM;
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	if (kind == OKNEK_KIND_OPEN) {
		e->open.dev = key->dev;
		e->open.ino = key->ino;
		e->open.flags = flags_or_mask;
		e->open.mode = 0;
		e->open._pad = 0;
		if (bpf_probe_read_kernel_str(e->open.path, sizeof(e->open.path), name) < 0)
			e->open.path[0] = 0;
	} else {
		e->watch.dev = key->dev;
		e->watch.ino = key->ino;
		e->watch.mask = flags_or_mask;
		if (bpf_probe_read_kernel_str(e->watch.path, sizeof(e->watch.path), name) < 0)
			e->watch.path[0] = 0;
	}
	bpf_ringbuf_submit(e, 0);
}

SEC("lsm/bprm_check_security")
int BPF_PROG(enforce_exec, struct linux_binprm *bprm, int ret)
{
	if (ret)
		return ret;
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	__u32 agent_id = agent->agent_id;
	struct oknek_inode_key key = {};
	inode_key_of(BPF_CORE_READ(bprm, file, f_inode), &key);
	struct oknek_block_value *v = bpf_map_lookup_elem(&block_exes, &key);
	if (!v)
		return 0;
	int slot = match_slot(v, OKNEK_KIND_EXEC, agent_id, 0, 0);
	if (slot < 0 || slot >= OKNEK_SLOTS)
		return 0;
	__u32 held = v->slots[slot].flags & OKNEK_SLOT_HOLD;
	__u32 rule_index = v->slots[slot].rule_index;
	if (held)
		bpf_send_signal(SIGSTOP);
	struct oknek_event *e = reserve(OKNEK_KIND_EXEC, agent_id);
	if (e) {
		e->hdr.flags = OKNEK_FLAG_BLOCKED | (held ? OKNEK_FLAG_HELD : 0);
		e->hdr.rule_index = rule_index;
		e->hdr.hook = OKNEK_HOOK_LSM;
		e->exec.dev = key.dev;
		e->exec.ino = key.ino;
		e->exec.argv_len = 0;
		e->exec.exec_flags = 0;
		e->exec._pad = 0;
		if (bpf_probe_read_kernel_str(e->exec.path, sizeof(e->exec.path),
					      BPF_CORE_READ(bprm, filename)) < 0)
			e->exec.path[0] = 0;
		bpf_ringbuf_submit(e, 0);
	}
	return -EPERM;
}

SEC("lsm/file_open")
int BPF_PROG(enforce_open, struct file *file, int ret)
{
	if (ret)
		return ret;
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	__u32 agent_id = agent->agent_id;
	struct oknek_inode_key key = {};
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	const struct oknek_block_slot *slot =
		file_block(dentry, BPF_CORE_READ(file, f_inode), OKNEK_KIND_OPEN, agent_id, &key);
	if (!slot)
		return 0;
	__u32 held = slot->flags & OKNEK_SLOT_HOLD;
	if (held)
		bpf_send_signal(SIGSTOP);
	emit_file_block(OKNEK_KIND_OPEN, agent_id, slot, &key, dentry, 0, held);
	return -EPERM;
}

SEC("lsm/path_notify")
int BPF_PROG(enforce_watch, const struct path *path, __u64 mask, unsigned int obj_type, int ret)
{
	if (ret)
		return ret;
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	__u32 agent_id = agent->agent_id;
	struct oknek_inode_key key = {};
	struct dentry *dentry = BPF_CORE_READ(path, dentry);
	const struct oknek_block_slot *slot = file_block(dentry, BPF_CORE_READ(dentry, d_inode),
							 OKNEK_KIND_WATCH, agent_id, &key);
	if (!slot)
		return 0;
	__u32 held = slot->flags & OKNEK_SLOT_HOLD;
	if (held)
		bpf_send_signal(SIGSTOP);
	emit_file_block(OKNEK_KIND_WATCH, agent_id, slot, &key, dentry, (__u32)mask, held);
	return -EPERM;
}

/* Looks the destination up in block_nets. Returns the matching slot, or 0. */
static __always_inline const struct oknek_block_slot *net_block(__u16 family, const __u8 *addr,
								__u16 port, __u32 kind,
								__u32 agent_id)
{
	struct oknek_net_key key = {};
	key.family = family;
	if (family == AF_INET) {
		key.prefixlen = 32 + 32;
		__builtin_memcpy(key.addr, addr, 4);
	} else if (family == AF_INET6) {
		key.prefixlen = 32 + 128;
		__builtin_memcpy(key.addr, addr, 16);
	} else {
		return 0;
	}
	struct oknek_block_value *v = bpf_map_lookup_elem(&block_nets, &key);
	if (!v)
		return 0;
	int slot = match_slot(v, kind, agent_id, 1, port);
	if (slot < 0 || slot >= OKNEK_SLOTS)
		return 0;
	return &v->slots[slot];
}

/* A connect's verdict on the model-call side. */
struct model_verdict {
	__u32 provider; /* provider id + 1, or 0: not a model call */
	__u32 refused;
	__u32 rule_index;
	__u32 held;
	__u32 quota_rule; /* the first quota that metered the call, or OKNEK_NO_RULE */
	__u32 quota_left;
};

static __always_inline int agent_in(__u64 agents, __u32 agent_id)
{
	return !agents || (agent_id < 64 && (agents & (1ull << agent_id)));
}

/* Only one hook judges model calls, so a call takes one quota token even where both BPF LSM
 * and the cgroup programs are attached. */
static __always_inline int model_hook_is(__u32 hook)
{
	__u32 zero = 0;
	struct oknek_settings *s = bpf_map_lookup_elem(&settings, &zero);
	return s && s->net_observer == hook;
}

/* Is the destination a model provider, and may this caller call it now? Takes a quota token
 * from every quota the call passes. */
static __always_inline void model_check(const struct oknek_task *task, __u16 family,
					const __u8 *addr, __u16 port, struct model_verdict *v)
{
	struct oknek_provider_key pk = {};
	pk.port = port;
	if (family == AF_INET) {
		pk.family = AF_INET;
		__builtin_memcpy(pk.addr, addr, 4);
	} else if (family == AF_INET6) {
		/* An IPv4-mapped address reaches the IPv4 provider: look that up. */
		__u64 head;
		__u32 mid;
		__builtin_memcpy(&head, addr, 8);
		__builtin_memcpy(&mid, addr + 8, 4);
		if (head == 0 && mid == __builtin_bswap32(0xffff)) {
			pk.family = AF_INET;
			__builtin_memcpy(pk.addr, addr + 12, 4);
		} else {
			pk.family = AF_INET6;
			__builtin_memcpy(pk.addr, addr, 16);
		}
	} else {
		return;
	}
	v->quota_rule = OKNEK_NO_RULE;
	struct oknek_provider *p = bpf_map_lookup_elem(&providers, &pk);
	if (!p)
		return;
	__u32 id = p->id;
	v->provider = id + 1;
	if (p->flags & OKNEK_PROVIDER_GATEWAY_ONLY) {
		v->refused = 1;
		v->rule_index = OKNEK_RULE_GATEWAY_ONLY;
		return;
	}
	struct oknek_model_policy *policy = bpf_map_lookup_elem(&model_policy, &id);
	if (!policy)
		return;
	for (int i = 0; i < OKNEK_SLOTS; i++) {
		const struct oknek_block_slot *s = &policy->refuse[i];
		if (!(s->flags & OKNEK_SLOT_USED) || !agent_in(s->agents, task->agent_id))
			continue;
		v->refused = 1;
		v->rule_index = s->rule_index;
		v->held = s->flags & OKNEK_SLOT_HOLD;
		return;
	}
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	for (int i = 0; i < OKNEK_QUOTA_SLOTS; i++) {
		const struct oknek_quota_slot *q = &policy->quotas[i];
		if (!(q->flags & OKNEK_SLOT_USED) || !agent_in(q->agents, task->agent_id))
			continue;
		struct oknek_quota_key k = {};
		k.rule_index = q->rule_index;
		if (q->by != OKNEK_QUOTA_BY_PROVIDER)
			k.agent_id = task->agent_id;
		if (q->by == OKNEK_QUOTA_BY_CALLER || q->by == OKNEK_QUOTA_BY_CALLER_PROVIDER) {
			k.uid = uid;
			k.exe_dev = task->exe_dev;
			k.exe_ino = task->exe_ino;
		}
		if (q->by == OKNEK_QUOTA_BY_PROVIDER || q->by == OKNEK_QUOTA_BY_CALLER_PROVIDER)
			k.provider_id = id;
		__u64 *credit = bpf_map_lookup_elem(&quota_credit, &k);
		if (!credit) {
			__u64 full = q->capacity;
			bpf_map_update_elem(&quota_credit, &k, &full, BPF_NOEXIST);
			credit = bpf_map_lookup_elem(&quota_credit, &k);
		}
		__u64 *used = bpf_map_lookup_elem(&quota_used, &k);
		if (!used) {
			__u64 none = 0;
			bpf_map_update_elem(&quota_used, &k, &none, BPF_NOEXIST);
			used = bpf_map_lookup_elem(&quota_used, &k);
		}
		if (!credit || !used) {
			/* No room for the bucket: refuse rather than let calls go uncounted. */
			v->refused = 1;
			v->rule_index = OKNEK_RULE_QUOTA_FULL;
			return;
		}
		if ((*used + 1) * OKNEK_QUOTA_UNIT > *credit) {
			v->refused = 1;
			v->rule_index = q->rule_index;
			v->held = q->flags & OKNEK_SLOT_HOLD;
			return;
		}
		__sync_fetch_and_add(used, 1);
		if (v->quota_rule == OKNEK_NO_RULE) {
			v->quota_rule = q->rule_index;
			__u64 calls = *credit / OKNEK_QUOTA_UNIT;
			__u64 taken = *used;
			v->quota_left = calls > taken ? (__u32)(calls - taken) : 0;
		}
	}
}

static __always_inline void emit_net(__u32 kind, __u32 agent_id, __u32 hook,
				     const struct oknek_block_slot *slot, __u32 held, __u16 family,
				     const __u8 *addr, __u16 port, __u64 bytes,
				     const struct model_verdict *model)
{
	struct oknek_event *e = reserve(kind, agent_id);
	if (!e)
		return;
	e->hdr.hook = hook;
	if (slot) {
		e->hdr.flags = OKNEK_FLAG_BLOCKED | (held ? OKNEK_FLAG_HELD : 0);
		e->hdr.rule_index = slot->rule_index;
	} else if (model && model->refused) {
		e->hdr.flags = OKNEK_FLAG_BLOCKED | (model->held ? OKNEK_FLAG_HELD : 0);
		e->hdr.rule_index = model->rule_index;
	} else {
		e->hdr.flags = OKNEK_FLAG_OBSERVED;
	}
	__builtin_memset(&e->net, 0, sizeof(e->net));
	e->net.provider = model ? model->provider : 0;
	e->net.quota_rule = model ? model->quota_rule : OKNEK_NO_RULE;
	e->net.quota_left = model ? model->quota_left : 0;
	e->net.family = family;
	e->net.port = port;
	e->net.bytes = bytes;
	if (family == AF_INET)
		__builtin_memcpy(e->net.addr, addr, 4);
	else
		__builtin_memcpy(e->net.addr, addr, 16);
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int net_observer_is(__u32 hook)
{
	__u32 zero = 0;
	struct oknek_settings *s = bpf_map_lookup_elem(&settings, &zero);
	return s && s->observe && s->net_observer == hook;
}

/* Reads a kernel struct sockaddr (LSM hooks get the kernel copy). */
static __always_inline int read_kernel_sockaddr(const void *sa, __u16 *family, __u8 *addr,
						__u16 *port)
{
	__u8 raw[24] = {};
	if (bpf_probe_read_kernel(raw, sizeof(raw), sa) < 0 &&
	    bpf_probe_read_kernel(raw, 16, sa) < 0)
		return -1;
	*family = raw[0] | (raw[1] << 8);
	*port = (raw[2] << 8) | raw[3];
	if (*family == AF_INET)
		__builtin_memcpy(addr, &raw[4], 4);
	else if (*family == AF_INET6)
		__builtin_memcpy(addr, &raw[8], 16);
	else
		return -1;
	return 0;
}

static __always_inline int lsm_net(__u32 kind, __u16 family, const __u8 *addr, __u16 port,
				   __u64 bytes, const struct oknek_task *task)
{
	__u32 agent_id = task->agent_id;
	const struct oknek_block_slot *slot = net_block(family, addr, port, kind, agent_id);
	if (!slot) {
		struct model_verdict model = {};
		if (kind == OKNEK_KIND_CONNECT && model_hook_is(OKNEK_HOOK_LSM))
			model_check(task, family, addr, port, &model);
		if (model.refused) {
			if (model.held)
				bpf_send_signal(SIGSTOP);
			emit_net(kind, agent_id, OKNEK_HOOK_LSM, 0, 0, family, addr, port, bytes,
				 &model);
			return -EPERM;
		}
		if (kind == OKNEK_KIND_CONNECT && (model.provider || net_observer_is(OKNEK_HOOK_LSM)))
			emit_net(kind, agent_id, OKNEK_HOOK_LSM, 0, 0, family, addr, port, bytes,
				 &model);
		return 0;
	}
	__u32 held = slot->flags & OKNEK_SLOT_HOLD;
	if (held)
		bpf_send_signal(SIGSTOP);
	emit_net(kind, agent_id, OKNEK_HOOK_LSM, slot, held, family, addr, port, bytes, 0);
	return -EPERM;
}

SEC("lsm/socket_connect")
int BPF_PROG(enforce_connect, struct socket *sock, struct sockaddr *address, int addrlen, int ret)
{
	if (ret)
		return ret;
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	__u16 family = 0, port = 0;
	__u8 addr[16] = {};
	if (addrlen < 8 || read_kernel_sockaddr(address, &family, addr, &port) < 0)
		return 0;
	return lsm_net(OKNEK_KIND_CONNECT, family, addr, port, 0, agent);
}

SEC("lsm/socket_sendmsg")
int BPF_PROG(enforce_sendmsg, struct socket *sock, struct msghdr *msg, int size, int ret)
{
	if (ret)
		return ret;
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 0;
	__u16 family = 0, port = 0;
	__u8 addr[16] = {};
	void *name = BPF_CORE_READ(msg, msg_name);
	if (name && BPF_CORE_READ(msg, msg_namelen) >= 8) {
		if (read_kernel_sockaddr(name, &family, addr, &port) < 0)
			return 0;
	} else {
		struct sock *sk = BPF_CORE_READ(sock, sk);
		if (!sk)
			return 0;
		family = BPF_CORE_READ(sk, __sk_common.skc_family);
		port = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
		if (family == AF_INET) {
			__u32 daddr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
			__builtin_memcpy(addr, &daddr, 4);
		} else if (family == AF_INET6) {
			BPF_CORE_READ_INTO((struct in6_addr *)addr, sk, __sk_common.skc_v6_daddr);
		} else {
			return 0;
		}
		if (port == 0)
			return 0;
	}
	return lsm_net(OKNEK_KIND_SEND, family, addr, port, size > 0 ? size : 0, agent);
}

/* ---- enforcement: cgroup sock_addr (network only, where BPF LSM is unavailable) ----------- */

static __always_inline int cgroup_net(struct bpf_sock_addr *ctx, __u32 kind, __u16 family)
{
	struct oknek_task *agent = current_agent();
	if (!agent)
		return 1;
	__u32 agent_id = agent->agent_id;
	__u8 addr[16] = {};
	__u16 port = __builtin_bswap16((__u16)ctx->user_port);
	if (family == AF_INET) {
		__u32 ip = ctx->user_ip4;
		__builtin_memcpy(addr, &ip, 4);
	} else {
		__u32 ip6[4];
		ip6[0] = ctx->user_ip6[0];
		ip6[1] = ctx->user_ip6[1];
		ip6[2] = ctx->user_ip6[2];
		ip6[3] = ctx->user_ip6[3];
		__builtin_memcpy(addr, ip6, 16);
	}
	const struct oknek_block_slot *slot = net_block(family, addr, port, kind, agent_id);
	struct model_verdict model = {};
	if (!slot) {
		if (kind == OKNEK_KIND_CONNECT && model_hook_is(OKNEK_HOOK_CGROUP))
			model_check(agent, family, addr, port, &model);
		if (!model.refused) {
			if (kind == OKNEK_KIND_CONNECT &&
			    (model.provider || net_observer_is(OKNEK_HOOK_CGROUP)))
				emit_net(kind, agent_id, OKNEK_HOOK_CGROUP, 0, 0, family, addr, port,
					 0, &model);
			return 1;
		}
	}
	__u32 held = slot ? slot->flags & OKNEK_SLOT_HOLD : model.held;
	if (held) {
		/* Signals cannot be sent from here; the sys_exit programs below stop the thread
		 * before the syscall returns to userspace. */
		__u32 pid = (__u32)bpf_get_current_pid_tgid();
		__u32 rule_index = slot ? slot->rule_index : model.rule_index;
		bpf_map_update_elem(&hold_pending, &pid, &rule_index, BPF_ANY);
	}
	emit_net(kind, agent_id, OKNEK_HOOK_CGROUP, slot, held, family, addr, port, 0,
		 slot ? 0 : &model);
	return 0;
}

SEC("cgroup/connect4")
int enforce_connect4(struct bpf_sock_addr *ctx)
{
	return cgroup_net(ctx, OKNEK_KIND_CONNECT, AF_INET);
}

SEC("cgroup/connect6")
int enforce_connect6(struct bpf_sock_addr *ctx)
{
	return cgroup_net(ctx, OKNEK_KIND_CONNECT, AF_INET6);
}

SEC("cgroup/sendmsg4")
int enforce_sendmsg4(struct bpf_sock_addr *ctx)
{
	return cgroup_net(ctx, OKNEK_KIND_SEND, AF_INET);
}

SEC("cgroup/sendmsg6")
int enforce_sendmsg6(struct bpf_sock_addr *ctx)
{
	return cgroup_net(ctx, OKNEK_KIND_SEND, AF_INET6);
}

static __always_inline void hold_on_exit(void)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	if (!bpf_map_lookup_elem(&hold_pending, &pid))
		return;
	bpf_map_delete_elem(&hold_pending, &pid);
	bpf_send_signal(SIGSTOP);
}

SEC("tracepoint/syscalls/sys_exit_connect")
int hold_connect(struct syscall_exit_ctx *ctx)
{
	hold_on_exit();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendto")
int hold_sendto(struct syscall_exit_ctx *ctx)
{
	hold_on_exit();
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_sendmsg")
int hold_sendmsg(struct syscall_exit_ctx *ctx)
{
	hold_on_exit();
	return 0;
}
