#!/bin/sh
# init of the quota proof VM (root: a Debian minbase + python3 ext4 disk made with
# `-O quota,project` and mounted with rootflags=prjquota). Runs seed's own
# disk code (imagefactory.seed.disk, the quota way) on two guests and prints
#   QUOTA-DEMO <step> PASS|FAIL <detail>
#   QUOTA-DEMO-SUMMARY passed=<n> failed=<n>
# on the serial console for tests/seed/test_seed_quota_qemu.py to parse.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/opt/imagefactory LC_ALL=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp

passed=0 failed=0
step() {
	name=$1; shift
	if "$@" >/tmp/step.out 2>&1; then
		passed=$((passed + 1)); echo "QUOTA-DEMO $name PASS $(tail -c 200 /tmp/step.out | tr '\n' ' ')"
	else
		failed=$((failed + 1)); echo "QUOTA-DEMO $name FAIL $(tail -c 1500 /tmp/step.out | tr '\n' ' ')"
	fi
}
py() { python3 -c "from pathlib import Path; from imagefactory.seed import disk; $1"; }
fails_with() { msg=$1; shift; ! "$@" 2>/tmp/err.out; grep -q "$msg" /tmp/err.out && cat /tmp/err.out; }
# As in a guest seeded with --disk: SYS_RESOURCE is outside the bounding set (with it, root ignores quotas).
guest() { setpriv --bounding-set -sys_resource -- "$@"; }

# Two guest roots sharing one 20 MiB file through a hard link (unified), owned by project 0.
mkdir -p /vservers/.hash /vservers/g1/usr /vservers/g2/usr
dd if=/dev/urandom of=/vservers/.hash/shared bs=1M count=20 2>/dev/null
ln /vservers/.hash/shared /vservers/g1/usr/shared && ln /vservers/.hash/shared /vservers/g2/usr/shared

step quota_available py "ok, why = disk.quota_available(Path('/vservers')); print(why); assert ok"
step auto_picks_quota py "assert disk.choose('auto', Path('/vservers')) == 'quota'"
step layer_g1 py "print(disk.setup(disk.Layer(Path('/vservers/g1')), 50 << 20, 'auto', 40000))"
step layer_g2 py "print(disk.setup(disk.Layer(Path('/vservers/g2')), 50 << 20, 'quota', 40001))"
step g1_writes_40M guest dd if=/dev/zero of=/vservers/.own/g1/upper/own1 bs=1M count=40
step g1_full_edquot fails_with "Disk quota exceeded" guest dd if=/dev/zero of=/vservers/.own/g1/upper/own2 bs=1M count=40
step g2_has_its_own_50M guest dd if=/dev/zero of=/vservers/.own/g2/upper/own1 bs=1M count=45
step usage_against_limit py "u = disk.usage(disk.Layer(Path('/vservers/g1')), 40000); print(u); assert 40 << 20 <= u[0] <= 50 << 20 and u[1] == 50 << 20"
step shared_not_counted py "u = disk.usage(disk.Layer(Path('/vservers/g2')), 40001); print(u); assert u[0] < 46 << 20"
step root_with_sys_resource_ignores_it dd if=/dev/zero of=/vservers/.own/g2/upper/own2 bs=1M count=10
step raise_limit py "disk.setup(disk.Layer(Path('/vservers/g1')), 80 << 20, 'auto', 40000)"
step g1_writes_after_raise guest dd if=/dev/zero of=/vservers/.own/g1/upper/own3 bs=1M count=25

echo "QUOTA-DEMO-SUMMARY passed=$passed failed=$failed"
sync
# RB_AUTOBOOT: qemu runs with -no-reboot, so this ends the VM.
python3 -c 'import ctypes, os; os.sync(); ctypes.CDLL(None).reboot(0x01234567)'
