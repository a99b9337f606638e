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
#define OKNEK_KIND_MODEL_CALL 5

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
	__u32 provider; /* connect: model provider id + 1 when the destination is one, else 0 */
	__u8 addr[16]; /* network byte order; IPv4 in the first 4 bytes */
	__u32 quota_rule; /* a model call that took a quota token: its rule; else OKNEK_NO_RULE */
	__u32 quota_left; /* whole calls left in that bucket after this one */
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

/* agent_tasks value: a tracked process, its agent and the executable it runs (the caller
 * identity model-call quotas are kept by). */
struct oknek_task {
	__u32 agent_id;
	__u32 exe_dev;
	__u64 exe_ino;
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

/* Model providers: a connect to one of their addresses is a model call. */
#define OKNEK_MAX_PROVIDERS 256
#define OKNEK_QUOTA_SLOTS 4
#define OKNEK_PROVIDER_GATEWAY_ONLY 1u
/* rule_index of a refusal because the provider is reachable through the gateway only. */
#define OKNEK_RULE_GATEWAY_ONLY 0xffffff01u
/* quota_rule of a model call no quota metered. */
#define OKNEK_NO_RULE 0xffffffffu
/* rule_index of a refusal because a quota bucket could not be created (map full). */
#define OKNEK_RULE_QUOTA_FULL 0xffffff02u

/* Quota bucket keys: whose calls share a bucket (same numbering as oknek_engine::QuotaBy). */
#define OKNEK_QUOTA_BY_CALLER 0
#define OKNEK_QUOTA_BY_PROVIDER 1
#define OKNEK_QUOTA_BY_CALLER_PROVIDER 2
#define OKNEK_QUOTA_BY_AGENT 3

/* One call is worth this many credit units, so refills can add fractions of a call. */
#define OKNEK_QUOTA_UNIT 1000000ull

struct oknek_provider_key {
	__u16 family;
	__u16 port; /* host byte order */
	__u32 _pad;
	__u8 addr[16];
};

struct oknek_provider {
	__u32 id; /* index into model_policy */
	__u32 flags;
};

struct oknek_quota_slot {
	__u64 agents; /* as in oknek_block_slot */
	__u64 capacity; /* limit × OKNEK_QUOTA_UNIT: a new bucket's credit */
	__u32 rule_index;
	__u8 flags; /* OKNEK_SLOT_USED | OKNEK_SLOT_HOLD */
	__u8 by;
	__u16 _pad;
};

struct oknek_model_policy {
	struct oknek_block_slot refuse[OKNEK_SLOTS]; /* kinds unused */
	struct oknek_quota_slot quotas[OKNEK_QUOTA_SLOTS];
};

/* A bucket: the kernel counts calls in quota_used, userspace refills credit in quota_credit;
 * a call passes while (used + 1) × UNIT <= credit. Neither side writes the other's map. */
struct oknek_quota_key {
	__u32 rule_index;
	__u32 agent_id;
	__u32 uid;
	__u32 provider_id;
	__u64 exe_ino;
	__u32 exe_dev;
	__u32 _pad;
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
_Static_assert(sizeof(struct oknek_net) == 40, "net size");
_Static_assert(__builtin_offsetof(struct oknek_net, quota_rule) == 32, "net quota offset");
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
_Static_assert(sizeof(struct oknek_task) == 16, "task size");
_Static_assert(sizeof(struct oknek_provider_key) == 24, "provider key size");
_Static_assert(sizeof(struct oknek_provider) == 8, "provider size");
_Static_assert(sizeof(struct oknek_quota_slot) == 24, "quota slot size");
_Static_assert(sizeof(struct oknek_model_policy) == 224, "model policy size");
_Static_assert(__builtin_offsetof(struct oknek_model_policy, quotas) == 128, "quotas offset");
_Static_assert(sizeof(struct oknek_quota_key) == 32, "quota key size");
_Static_assert(sizeof(struct oknek_meta) == 40, "meta size");

#endif
