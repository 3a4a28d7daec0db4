/*
 * composefs-test: the /init of a tiny initramfs that proves composefs with
 * fs-verity on our kernel, inside qemu. The disk /dev/vda is an ext4 store
 * (made on the host with `mkfs.ext4 -O verity`) holding a guest's composefs
 * image (EROFS, made by mkcomposefs) and its content-addressed objects.
 *
 * Phase 1 (CFS_PHASE=1): a verity=require mount refuses to read files whose
 * objects have no fs-verity yet; then fs-verity is enabled on every object
 * (and the image), each measured digest must equal the object's name, and
 * every file of the guest reads through the verity=require mount.
 * Phase 2 (CFS_PHASE=2, after the host flipped a byte of one object on the
 * disk): reading that file fails with EIO, every other file still reads.
 *
 * One line per rule on the serial console, parsed by kernel/qemutest.py:
 *   COMPOSEFS-TEST <rule> PASS|FAIL <detail>
 *   COMPOSEFS-SUMMARY passed=<n> failed=<n>
 * Parameters come from the kernel command line as environment variables.
 *
 * Statically linked: gcc -static -O2 -o init composefs-test.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/fsverity.h>
#include <linux/loop.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE "/store"
#define OBJECTS STORE "/objects"
#define IMAGE_MNT "/image"
#define GUEST "/guest"
#define TEST_TAG "COMPOSEFS"
#include "vmtest.h"

#define OVERLAY_OPTS "metacopy=on,redirect_dir=on,lowerdir=" IMAGE_MNT "::" OBJECTS ",verity=require"

static const char *env(const char *name)
{
	const char *value = getenv(name);

	return value ? value : "";
}

static const char *err_name(int err)
{
	return err ? strerrorname_np(err) : "none";
}

/* Read a whole file; 0 and its size on success, else the errno of the failing call. */
static int read_all(const char *path, long long *size)
{
	static char buf[1 << 16];
	int fd = open(path, O_RDONLY | O_NOFOLLOW), err = 0;
	ssize_t n;

	*size = 0;
	if (fd < 0)
		return errno;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		*size += n;
	if (n < 0)
		err = errno;
	close(fd);
	return err;
}

/* Attach the image read-only to a free loop device, as libcomposefs does. */
static int loop_attach(const char *image, char *loopname, size_t len)
{
	struct loop_config config = { 0 };
	int ctl, loopfd, fd, err;
	long nr;

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return -errno;
	nr = ioctl(ctl, LOOP_CTL_GET_FREE);
	err = errno;
	close(ctl);
	if (nr < 0)
		return -err;
	snprintf(loopname, len, "/dev/loop%ld", nr);
	loopfd = open(loopname, O_RDWR | O_CLOEXEC);
	if (loopfd < 0)
		return -errno;
	fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
		close(loopfd);
		return -err;
	}
	config.fd = fd;
	config.block_size = 4096;
	config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR;
	if (ioctl(loopfd, LOOP_CONFIGURE, &config) < 0) {
		err = errno;
		close(fd);
		close(loopfd);
		return -err;
	}
	close(fd);
	return loopfd;
}

/* Mount the guest: EROFS image on a loop device, overlay with the objects as data-only layer. */
static int mount_composefs(const char *rule)
{
	char loopname[64];
	int loopfd = loop_attach(STORE "/guest.cfs", loopname, sizeof(loopname));

	if (loopfd < 0) {
		result(rule, 0, "loop setup: %s", err_name(-loopfd));
		return -1;
	}
	if (mount(loopname, IMAGE_MNT, "erofs", MS_RDONLY, NULL) < 0) {
		result(rule, 0, "mount -t erofs %s: %s", loopname, err_name(errno));
		close(loopfd);
		return -1;
	}
	close(loopfd); /* autoclear: the loop device goes away with the erofs mount */
	if (mount("composefs", GUEST, "overlay", MS_RDONLY, OVERLAY_OPTS) < 0) {
		result(rule, 0, "mount -t overlay -o %s: %s", OVERLAY_OPTS, err_name(errno));
		umount(IMAGE_MNT);
		return -1;
	}
	result(rule, 1, "erofs %s on " IMAGE_MNT ", overlay -o %s on " GUEST, loopname, OVERLAY_OPTS);
	return 0;
}

static void umount_composefs(void)
{
	umount(GUEST);
	umount(IMAGE_MNT);
}

static int enable_and_measure(const char *path, char *hex, size_t hexlen, int *enable_err)
{
	struct fsverity_enable_arg arg = { .version = 1, .hash_algorithm = FS_VERITY_HASH_ALG_SHA256,
					   .block_size = 4096 };
	struct {
		struct fsverity_digest d;
		unsigned char buf[64];
	} m = { .d.digest_size = 64 };
	int fd = open(path, O_RDONLY), err = 0;

	*enable_err = 0;
	if (fd < 0)
		return errno;
	if (ioctl(fd, FS_IOC_ENABLE_VERITY, &arg) < 0 && errno != EEXIST)
		*enable_err = errno;
	if (ioctl(fd, FS_IOC_MEASURE_VERITY, &m) < 0)
		err = errno;
	close(fd);
	hex[0] = 0;
	for (unsigned i = 0; !err && i < m.d.digest_size && 2 * i + 2 < hexlen; i++)
		sprintf(hex + 2 * i, "%02x", m.buf[i]);
	return err ? err : *enable_err;
}

/* Enable fs-verity on every object (objects/XX/rest-of-digest); each digest must equal its name. */
static void verity_all_objects(void)
{
	long objects = 0, enabled = 0, matched = 0;
	char first_problem[300] = "";
	DIR *top = opendir(OBJECTS);
	struct dirent *a, *b;

	if (!top) {
		result("enable_verity_all_objects", 0, "opendir " OBJECTS ": %s", err_name(errno));
		return;
	}
	while ((a = readdir(top))) {
		char dir[300];
		DIR *sub;

		if (a->d_name[0] == '.' || strlen(a->d_name) != 2)
			continue;
		snprintf(dir, sizeof(dir), OBJECTS "/%s", a->d_name);
		if (!(sub = opendir(dir)))
			continue;
		while ((b = readdir(sub))) {
			char path[600], name[600], hex[160];
			int enable_err, err;

			if (b->d_type != DT_REG)
				continue;
			objects++;
			snprintf(path, sizeof(path), "%s/%s", dir, b->d_name);
			snprintf(name, sizeof(name), "%s%s", a->d_name, b->d_name);
			err = enable_and_measure(path, hex, sizeof(hex), &enable_err);
			if (!enable_err)
				enabled++;
			if (!err && strcmp(hex, name) == 0)
				matched++;
			else if (!first_problem[0])
				snprintf(first_problem, sizeof(first_problem), " first problem: %.200s (%s, measured %.16s)",
					 path, err_name(err), hex);
		}
		closedir(sub);
	}
	closedir(top);
	result("enable_verity_all_objects", objects > 0 && enabled == objects, "objects=%ld enabled=%ld%s", objects,
	       enabled, first_problem);
	result("measured_digest_is_object_name", objects > 0 && matched == objects, "matched=%ld of %ld", matched,
	       objects);
}

/* Walk the mounted guest and read every regular file. */
static const char *tampered = ""; /* set in phase 2 */
static long files_ok, files_bad, files_tampered_eio;
static long long bytes_read;
static char walk_problem[300];

static int visit(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	long long size;
	int err;
	const char *rel = path + strlen(GUEST);

	(void)ftw;
	if (type != FTW_F || !S_ISREG(st->st_mode))
		return 0;
	err = read_all(path, &size);
	if (tampered[0] && strcmp(rel, tampered) == 0) {
		if (err == EIO)
			files_tampered_eio++;
		return 0;
	}
	if (!err && size == st->st_size) {
		files_ok++;
		bytes_read += size;
	} else {
		files_bad++;
		if (!walk_problem[0])
			snprintf(walk_problem, sizeof(walk_problem), " first problem: %.200s (%s, %lld of %lld bytes)", rel,
				 err_name(err), size, (long long)st->st_size);
	}
	return 0;
}

static void read_guest(const char *rule)
{
	files_ok = files_bad = files_tampered_eio = bytes_read = 0;
	walk_problem[0] = 0;
	if (nftw(GUEST, visit, 32, FTW_PHYS) < 0) {
		result(rule, 0, "walk " GUEST ": %s", err_name(errno));
		return;
	}
	result(rule, files_ok > 0 && files_bad == 0, "files=%ld bytes=%lld unreadable=%ld%s", files_ok, bytes_read,
	       files_bad, walk_problem);
}

static void phase1(void)
{
	const char *probe = env("CFS_PROBE");
	char path[600], hex[160];
	long long size;
	int err, enable_err, fd;

	/* Before fs-verity is enabled, verity=require must refuse the data. */
	if (mount_composefs("mount_before_verity") == 0) {
		snprintf(path, sizeof(path), GUEST "%s", probe);
		err = read_all(path, &size);
		result("read_refused_without_verity", err == EIO, "read %s: %s", probe, err_name(err));
		umount_composefs();
	}
	verity_all_objects();
	err = enable_and_measure(STORE "/guest.cfs", hex, sizeof(hex), &enable_err);
	result("image_digest", !err && strcmp(hex, env("CFS_IMAGE_DIGEST")) == 0, "measured %s expected %s (%s)", hex,
	       env("CFS_IMAGE_DIGEST"), err_name(err));
	if (mount_composefs("mount_verity_require") < 0)
		return;
	read_guest("read_every_file");
	snprintf(path, sizeof(path), GUEST "%s", probe);
	fd = open(path, O_WRONLY);
	err = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	result("guest_write_denied", err == EROFS, "open %s for writing: %s", probe, err_name(err));
	umount_composefs();
	snprintf(path, sizeof(path), OBJECTS "/%s", env("CFS_PROBE_OBJECT"));
	fd = open(path, O_WRONLY);
	err = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	result("verity_object_write_denied", err == EPERM, "open objects/%s for writing: %s", env("CFS_PROBE_OBJECT"),
	       err_name(err));
}

static void phase2(void)
{
	char path[600];
	long long size;
	int err;

	tampered = env("CFS_TAMPERED");
	snprintf(path, sizeof(path), OBJECTS "/%s", env("CFS_TAMPERED_OBJECT"));
	err = read_all(path, &size);
	result("tampered_object_read_fails", err == EIO, "read objects/%s: %s", env("CFS_TAMPERED_OBJECT"),
	       err_name(err));
	if (mount_composefs("mount_verity_require") < 0)
		return;
	snprintf(path, sizeof(path), GUEST "%s", tampered);
	err = read_all(path, &size);
	result("tampered_file_read_fails", err == EIO, "read %s: %s after %lld bytes", tampered, err_name(err), size);
	read_guest("other_files_still_read");
	result("walk_saw_tampered_file", files_tampered_eio == 1, "EIO for %s: %ld", tampered, files_tampered_eio);
	umount_composefs();
}

int main(void)
{
	const char *phase = env("CFS_PHASE");

	mkdir("/dev", 0755);
	mkdir(STORE, 0755);
	mkdir(IMAGE_MNT, 0755);
	mkdir(GUEST, 0755);
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) < 0 && errno != EBUSY)
		printf("COMPOSEFS-NOTE devtmpfs: %s\n", strerror(errno));
	if (mount("/dev/vda", STORE, "ext4", 0, NULL) < 0) {
		result("mount_store", 0, "mount /dev/vda: %s", err_name(errno));
	} else {
		result("mount_store", 1, "ext4 /dev/vda on " STORE ", phase %s", phase);
		if (strcmp(phase, "1") == 0)
			phase1();
		else if (strcmp(phase, "2") == 0)
			phase2();
		else
			result("phase", 0, "CFS_PHASE must be 1 or 2, got '%s'", phase);
		if (umount(STORE) < 0)
			result("umount_store", 0, "%s", err_name(errno));
	}
	summary();
	sync();
	reboot(RB_AUTOBOOT); /* qemu runs with -no-reboot, so this ends the VM */
	return 0;
}
