/* The few kernel types the probes read, with only the fields used. CO-RE relocates every field
 * access against the running kernel's BTF (preserve_access_index), so offsets here are never
 * used as such; names and field types must match the kernel's. */
#ifndef OKNEK_KERNEL_TYPES_H
#define OKNEK_KERNEL_TYPES_H

typedef int pid_t;
typedef __u32 dev_t;
typedef long long loff_t;

#define KT __attribute__((preserve_access_index))

typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live;
} KT;

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} KT;

struct task_struct {
	pid_t pid;
	pid_t tgid;
	struct mm_struct *mm;
	struct signal_struct *signal;
} KT;

struct super_block {
	dev_t s_dev;
} KT;

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} KT;

struct qstr {
	__u32 len;
	const unsigned char *name;
} KT;

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
} KT;

struct vfsmount;

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} KT;

struct file {
	struct path f_path;
	struct inode *f_inode;
} KT;

struct linux_binprm {
	struct file *file;
	const char *filename;
} KT;

/* Read whole: the kernel's members are a named union (in6_u). */
struct in6_addr {
	__u8 bytes[16];
};

struct sock_common {
	__u32 skc_daddr;
	__u16 skc_dport;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
} KT;

struct sock {
	struct sock_common __sk_common;
} KT;

struct socket {
	struct sock *sk;
} KT;

struct sockaddr;

struct msghdr {
	void *msg_name;
	int msg_namelen;
} KT;

#undef KT

/* Syscall tracepoint context (the stable format of events/syscalls/sys_enter_* and sys_exit_*). */
struct syscall_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct syscall_exit_ctx {
	__u64 common;
	long id;
	long ret;
};

/* User-space structures read from syscall arguments. */
struct user_msghdr {
	void *msg_name;
	int msg_namelen;
	struct user_iovec *msg_iov;
	unsigned long msg_iovlen;
};

struct user_iovec {
	void *iov_base;
	unsigned long iov_len;
};

struct user_open_how {
	__u64 flags;
	__u64 mode;
	__u64 resolve;
};

#endif
