/*
 * ixunlink-test: the /init of a tiny initramfs that checks the IXUNLINK rules
 * on the patched kernel, inside qemu. It mounts the ext4 disk /dev/vda, runs
 * every rule, and prints one line per rule on the serial console:
 *
 *   IXUNLINK-TEST <rule> PASS|FAIL <detail>
 *   IXUNLINK-SUMMARY passed=<n> failed=<n>
 *
 * The host side (kernel/qemutest.py) parses these lines. It also leaves
 * /persist on the disk with IMMUTABLE|IXUNLINK set, so the host can read the
 * on-disk flags with debugfs after the VM has stopped.
 *
 * Statically linked, no libc extras: gcc -static -O2 -o init ixunlink-test.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef FS_IXUNLINK_FL
#define FS_IXUNLINK_FL 0x08000000 /* the value our patch (and Linux-VServer) uses */
#endif
#define PROTECTED (FS_IMMUTABLE_FL | FS_IXUNLINK_FL)
#define STORE_TEXT "shared store content\n"
#define TEST_TAG "IXUNLINK"
#include "vmtest.h"


/* Expect a call to fail with EPERM; rc is its return value, errno is read here. */
static void expect_eperm(const char *rule, int rc)
{
	int err = errno;

	result(rule, rc < 0 && err == EPERM, "rc=%d errno=%s", rc, rc < 0 ? strerrorname_np(err) : "none");
}

static void expect_ok(const char *rule, int rc)
{
	int err = errno;

	result(rule, rc == 0, "rc=%d errno=%s", rc, rc < 0 ? strerrorname_np(err) : "none");
}

static int get_flags(const char *path, int *flags)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW), rc;

	if (fd < 0)
		return -1;
	rc = ioctl(fd, FS_IOC_GETFLAGS, flags);
	close(fd);
	return rc;
}

/* Set the protection bits to exactly `flags`, keeping the others (extents etc.) as chattr does. */
static int set_flags(const char *path, int flags)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW), rc, err, old = 0;

	if (fd < 0)
		return -1;
	rc = ioctl(fd, FS_IOC_GETFLAGS, &old);
	flags |= old & ~PROTECTED;
	if (rc == 0)
		rc = ioctl(fd, FS_IOC_SETFLAGS, &flags);
	err = errno;
	close(fd);
	errno = err;
	return rc;
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0)
		return -1;
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		close(fd);
		return -1;
	}
	return close(fd);
}

static int content_is(const char *path, const char *text)
{
	char buf[256] = {0};
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	return n == (ssize_t)strlen(text) && memcmp(buf, text, n) == 0;
}

static ino_t inode_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_ino : 0;
}

static nlink_t links_of(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_nlink : 0;
}

/* Drop CAP_LINUX_IMMUTABLE from the bounding, permitted and effective sets. */
static int drop_cap_linux_immutable(void)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	if (prctl(PR_CAPBSET_DROP, CAP_LINUX_IMMUTABLE, 0, 0, 0) < 0)
		return -1;
	if (syscall(SYS_capget, &hdr, data) < 0)
		return -1;
	data[0].effective &= ~(1u << CAP_LINUX_IMMUTABLE);
	data[0].permitted &= ~(1u << CAP_LINUX_IMMUTABLE);
	data[0].inheritable &= ~(1u << CAP_LINUX_IMMUTABLE);
	return syscall(SYS_capset, &hdr, data);
}

/* A guest without CAP_LINUX_IMMUTABLE: flags are locked, names are not. */
static void unprivileged_rules(void)
{
	int flags = 0, rc;

	if (drop_cap_linux_immutable() < 0) {
		result("drop_capability", 0, "capset: %s", strerrorname_np(errno));
		return;
	}
	result("drop_capability", 1, "CAP_LINUX_IMMUTABLE dropped");

	expect_eperm("clear_flags_denied_without_cap", set_flags("store", 0));
	expect_eperm("clear_ixunlink_denied_without_cap", set_flags("store", FS_IMMUTABLE_FL));
	write_file("plain", "plain\n");
	expect_eperm("set_ixunlink_denied_without_cap", set_flags("plain", FS_IXUNLINK_FL));
	rc = get_flags("store", &flags);
	result("flags_unchanged_without_cap", rc == 0 && (flags & PROTECTED) == PROTECTED, "flags=%#x", flags);
	expect_eperm("write_denied_without_cap", open("store", O_WRONLY) < 0 ? -1 : 0);

	/* dpkg-style update of a unified file: write the new version, rename it over. */
	write_file("usr-bin-tool.dpkg-new", "version 2\n");
	expect_ok("guest_update_rename_over_without_cap", rename("usr-bin-tool.dpkg-new", "usr-bin-tool"));
	result("guest_update_content", content_is("usr-bin-tool", "version 2\n"), "guest sees the new version");
	expect_ok("unlink_allowed_without_cap", unlink("guest2-file"));
}

static void run_rules(void)
{
	int flags = 0, rc;
	ino_t store_ino;
	pid_t child;
	int status;

	mkdir("/mnt/t", 0755);
	if (chdir("/mnt/t") < 0) {
		result("setup", 0, "chdir: %s", strerrorname_np(errno));
		return;
	}
	write_file("store", STORE_TEXT);
	store_ino = inode_of("store");

	expect_ok("set_immutable_ixunlink", set_flags("store", PROTECTED));
	rc = get_flags("store", &flags);
	result("flags_read_back", rc == 0 && (flags & PROTECTED) == PROTECTED, "flags=%#x", flags);

	expect_eperm("write_denied", open("store", O_WRONLY) < 0 ? -1 : 0);
	expect_eperm("append_denied", open("store", O_WRONLY | O_APPEND) < 0 ? -1 : 0);
	expect_eperm("truncate_denied", truncate("store", 0));
	expect_eperm("chmod_denied", chmod("store", 0600));
	expect_eperm("chown_denied", chown("store", 1000, 1000));
	expect_eperm("utimes_denied", utimensat(AT_FDCWD, "store", (struct timespec[2]){{0, 0}, {0, 0}}, 0));

	/* Names: link, rename over, rename away, unlink. */
	expect_ok("link_allowed", link("store", "guest1-file"));
	result("link_count", links_of("store") == 2, "nlink=%lu", (unsigned long)links_of("store"));
	expect_eperm("write_via_link_denied", open("guest1-file", O_WRONLY) < 0 ? -1 : 0);
	write_file("replacement", "replacement\n");
	expect_ok("rename_over_allowed", rename("replacement", "guest1-file"));
	expect_ok("link_again", link("store", "guest1-file.old"));
	expect_ok("rename_allowed", rename("guest1-file.old", "moved-name"));
	expect_ok("unlink_allowed", unlink("moved-name"));
	result("store_unchanged_after_name_changes",
	       content_is("store", STORE_TEXT) && inode_of("store") == store_ino && links_of("store") == 1,
	       "nlink=%lu", (unsigned long)links_of("store"));

	/* The unify linking protocol (as vhashify does it): park the guest file, link the store entry, drop the parked name. */
	write_file("guest2-file", STORE_TEXT);
	rc = rename("guest2-file", "guest2-file.unify-tmp");
	rc = rc ? rc : link("store", "guest2-file");
	rc = rc ? rc : unlink("guest2-file.unify-tmp");
	result("unify_link_protocol", rc == 0 && inode_of("guest2-file") == store_ino, "rc=%d same_inode=%d", rc,
	       inode_of("guest2-file") == store_ino);
	expect_ok("link_for_update_demo", link("store", "usr-bin-tool"));

	/* Mainline IMMUTABLE alone still freezes names. */
	write_file("immutable-only", "immutable only\n");
	expect_ok("set_immutable_only", set_flags("immutable-only", FS_IMMUTABLE_FL));
	expect_eperm("immutable_only_unlink_denied", unlink("immutable-only"));
	expect_eperm("immutable_only_link_denied", link("immutable-only", "immutable-only.link"));
	write_file("replacement2", "x\n");
	expect_eperm("immutable_only_rename_over_denied", rename("replacement2", "immutable-only"));

	/* IXUNLINK never frees a directory's names (moving it would rewrite its ".."). */
	mkdir("dir", 0755);
	mkdir("dir/sub", 0755);
	expect_ok("set_dir_flags", set_flags("dir/sub", PROTECTED));
	expect_eperm("dir_rmdir_denied", rmdir("dir/sub"));
	expect_eperm("dir_rename_denied", rename("dir/sub", "moved-dir"));
	set_flags("dir/sub", 0);

	child = fork();
	if (child == 0) {
		passed = failed = 0;
		unprivileged_rules();
		_exit(failed ? 1 : 0);
	}
	/* The child prints its own lines; here only its overall outcome counts. */
	waitpid(child, &status, 0);
	result("unprivileged_child", WIFEXITED(status) && WEXITSTATUS(status) == 0, "status=%#x", status);
	result("store_unchanged_after_guest_update",
	       content_is("store", STORE_TEXT) && inode_of("store") == store_ino &&
	       get_flags("store", &flags) == 0 && (flags & PROTECTED) == PROTECTED,
	       "flags=%#x", flags);

	expect_ok("clear_flags_with_cap", set_flags("store", 0));
	expect_ok("write_after_clear", write_file("store", "writable again\n"));
	set_flags("immutable-only", 0);

	/* Leave a protected file for the host to inspect with debugfs. */
	write_file("/mnt/persist", STORE_TEXT);
	expect_ok("set_flags_for_persist", set_flags("/mnt/persist", PROTECTED));
}

int main(void)
{
	mkdir("/dev", 0755);
	mkdir("/mnt", 0755);
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) < 0 && errno != EBUSY)
		printf("IXUNLINK-NOTE devtmpfs: %s\n", strerror(errno));
	if (mount("/dev/vda", "/mnt", "ext4", 0, NULL) < 0) {
		result("mount_ext4", 0, "mount /dev/vda: %s", strerrorname_np(errno));
	} else {
		result("mount_ext4", 1, "/dev/vda on /mnt");
		run_rules();
		if (chdir("/") < 0 || umount("/mnt") < 0)
			result("umount", 0, "%s", strerrorname_np(errno));
	}
	summary();
	sync();
	reboot(RB_AUTOBOOT); /* qemu runs with -no-reboot, so this ends the VM */
	return 0;
}
