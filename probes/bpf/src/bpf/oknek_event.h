/* The one record layout shared by the eBPF programs and the Rust loader (src/layout.rs).
 * Every size and offset below is asserted on both sides; change them together. */
#ifndef OKNEK_EVENT_H
#define OKNEK_EVENT_H

#define OKNEK_COMM_LEN 16
#define OKNEK_PATH_LEN 256
#define OKNEK_ARGV_LEN 1024
#define OKNEK_SLOTS 4
#define OKNEK_SLOT_PORTS 4

/* Same numbering as oknek_event::Kind. */
#define OKNEK_KIND_EXEC 0
#define OKNEK_KIND_OPEN 1
#define OKNEK_KIND_CONNECT 2
#define OKNEK_KIND_SEND 3
#define OKNEK_KIND_WATCH 4

/* Header flags. */
#define OKNEK_FLAG_BLOCKED 1u
#define OKNEK_FLAG_HELD 2u
#define OKNEK_FLAG_OBSERVED 4u

/* Header hook: which program produced the record. */
#define OKNEK_HOOK_TRACEPOINT 0
#define OKNEK_HOOK_LSM 1
#define OKNEK_HOOK_CGROUP 2

/* Exec body flags. */
#define OKNEK_EXEC_ARGV_TRUNCATED 1u

struct oknek_header {
	__u32 kind;
	__u32 flags;
	__u32 pid;
	__u32 tgid;
	__u32 uid;
	__u32 agent_id;
	__u32 rule_index;
	__u32 hook;
	__u64 cgroup_id;
	__u64 ktime_ns;
	char comm[OKNEK_COMM_LEN];
};

struct oknek_exec {
	__u64 ino;
	__u32 dev;
	__u32 argv_len; /* bytes used in argv, NUL-separated */
	__u32 exec_flags;
	__u32 _pad;
	char path[OKNEK_PATH_LEN];
	char argv[OKNEK_ARGV_LEN];
};

struct oknek_open {
	__u64 ino; /* 0 when not known (observed at syscall entry) */
	__u32 dev;
	__u32 flags;
	__u32 mode;
	__u32 _pad;
	char path[OKNEK_PATH_LEN];
};

struct oknek_net {
	__u64 bytes;
	__u16 family; /* AF_INET, AF_INET6; 0 when no destination is known */
	__u16 port;   /* host byte order */
	__u32 _pad;
	__u8 addr[16]; /* network byte order; IPv4 in the first 4 bytes */
};

struct oknek_watch {
	__u64 ino;
	__u32 dev;
	__u32 mask;
	char path[OKNEK_PATH_LEN];
};

struct oknek_event {
	struct oknek_header hdr;
	union {
		struct oknek_exec exec;
		struct oknek_open open;
		struct oknek_net net;
		struct oknek_watch watch;
	};
};

/* Map keys and values written by userspace. */
struct oknek_inode_key {
	__u32 dev; /* kernel encoding: major << 20 | minor */
	__u32 _pad;
	__u64 ino;
};

#define OKNEK_SLOT_USED 1u
#define OKNEK_SLOT_HOLD 2u

struct oknek_block_slot {
	__u64 agents; /* bit n = agent id n; 0 = every agent */
	__u32 rule_index;
	__u8 flags;
	__u8 kinds; /* bit n = kind n */
	__u16 nports; /* 0 = any port */
	__u16 port_lo[OKNEK_SLOT_PORTS];
	__u16 port_hi[OKNEK_SLOT_PORTS];
};

struct oknek_block_value {
	struct oknek_block_slot slots[OKNEK_SLOTS];
};

struct oknek_net_key {
	__u32 prefixlen; /* 32 bits of family + pad, then the address prefix */
	__u8 family;
	__u8 _pad[3];
	__u8 addr[16];
};

struct oknek_settings {
	__u32 observe;
	__u32 net_observer; /* OKNEK_HOOK_LSM or OKNEK_HOOK_CGROUP: who reports observed connects */
};

struct oknek_meta {
	__u8 object_sha256[32];
	__u32 ring_bytes;
	__u32 _pad;
};

_Static_assert(sizeof(struct oknek_header) == 64, "header size");
_Static_assert(__builtin_offsetof(struct oknek_header, cgroup_id) == 32, "cgroup_id offset");
_Static_assert(__builtin_offsetof(struct oknek_header, comm) == 48, "comm offset");
_Static_assert(sizeof(struct oknek_exec) == 1304, "exec size");
_Static_assert(__builtin_offsetof(struct oknek_exec, path) == 24, "exec path offset");
_Static_assert(__builtin_offsetof(struct oknek_exec, argv) == 280, "exec argv offset");
_Static_assert(sizeof(struct oknek_open) == 280, "open size");
_Static_assert(__builtin_offsetof(struct oknek_open, path) == 24, "open path offset");
_Static_assert(sizeof(struct oknek_net) == 32, "net size");
_Static_assert(__builtin_offsetof(struct oknek_net, addr) == 16, "net addr offset");
_Static_assert(sizeof(struct oknek_watch) == 272, "watch size");
_Static_assert(__builtin_offsetof(struct oknek_watch, path) == 16, "watch path offset");
_Static_assert(sizeof(struct oknek_event) == 1368, "event size");
_Static_assert(__builtin_offsetof(struct oknek_event, exec) == 64, "body offset");
_Static_assert(sizeof(struct oknek_inode_key) == 16, "inode key size");
_Static_assert(sizeof(struct oknek_block_slot) == 32, "slot size");
_Static_assert(__builtin_offsetof(struct oknek_block_slot, port_lo) == 16, "slot ports offset");
_Static_assert(sizeof(struct oknek_block_value) == 128, "block value size");
_Static_assert(sizeof(struct oknek_net_key) == 24, "net key size");
_Static_assert(sizeof(struct oknek_settings) == 8, "settings size");
_Static_assert(sizeof(struct oknek_meta) == 40, "meta size");

#endif
