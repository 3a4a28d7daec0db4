#!/bin/sh
# init of the unify demonstration VM (root: a Debian minbase + python3 ext4 disk).
# Runs the real `imagefactory unify --mode vserver` on two tiny guest trees on
# the IXUNLINK kernel, then a dpkg-style update inside one guest, and prints
#   UNIFY-DEMO <step> PASS|FAIL <detail>
#   UNIFY-DEMO-SUMMARY passed=<n> failed=<n>
# on the serial console for kernel/qemutest.py to parse.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/opt/imagefactory LC_ALL=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp

passed=0 failed=0
step() {
	name=$1; shift
	if "$@" >/tmp/step.out 2>&1; then
		passed=$((passed + 1)); echo "UNIFY-DEMO $name PASS $(tail -c 200 /tmp/step.out | tr '\n' ' ')"
	else
		failed=$((failed + 1)); echo "UNIFY-DEMO $name FAIL $(tail -c 1500 /tmp/step.out | tr '\n' ' ')"
	fi
}
not() { ! "$@"; }
# Helpers as commands (not functions) so `sh -c` steps can use them too.
mkdir -p /tmp/bin && export PATH=/tmp/bin:$PATH
printf '#!/bin/sh\nexec python3 -c "from imagefactory.cli import main; main()" "$@"\n' >/tmp/bin/ifc
printf '#!/bin/sh\nexec python3 -c "import os,sys; from unify.probe import get_flags; print(get_flags(os.open(sys.argv[1], os.O_RDONLY)))" "$1"\n' >/tmp/bin/flags_of
chmod +x /tmp/bin/ifc /tmp/bin/flags_of

# Two guests with the same files (a tool and a slice of the Python stdlib).
for g in g1 g2; do
	mkdir -p /vservers/$g/usr/bin /vservers/$g/usr/lib
	printf 'tool version 1: identical in both guests\n' >/vservers/$g/usr/bin/tool
	touch -d 2024-01-01 /vservers/$g/usr/bin/tool
	cp -a /usr/lib/python3.11/json /vservers/$g/usr/lib/json
done

step probe_detects_ixunlink sh -c 'ifc kernel probe --json /vservers >/tmp/probe.json && python3 -c "import json,sys; d=json.load(open(\"/tmp/probe.json\")); print({k: d[k] for k in (\"vserver\", \"immutable\", \"ixunlink\", \"filesystem\", \"auto_mode\")}); sys.exit(0 if d[\"ixunlink\"] and d[\"immutable\"] and d[\"auto_mode\"] == \"vserver\" else 1)"'
if [ "${DEMO_COMPOSEFS:-0}" = 1 ]; then
	# A kernel with the guest-host fragment on an ext4 root made with -O verity: the same probe
	# must see fs-verity, EROFS and overlayfs data-only layers with verity=require.
	step probe_detects_composefs sh -c 'python3 -c "import json,sys; d=json.load(open(\"/tmp/probe.json\")); keys=(\"fsverity\", \"erofs\", \"overlay_data_only\", \"overlay_verity\"); print({k: d[k] for k in keys + (\"composefs_verity_ready\",)}); [print(k, d[k + \"_evidence\"]) for k in keys]; sys.exit(0 if d[\"composefs_verity_ready\"] else 1)"'
fi
step unify_vserver sh -c 'ifc --debug unify /vservers/g1 /vservers/g2 --store /vservers/.hash --mode vserver --json -q >/tmp/unify.json && python3 -c "import json; d=json.load(open(\"/tmp/unify.json\")); print({k: d.get(k) for k in (\"mode\", \"linked\", \"bytes_saved\")}); assert d[\"linked\"] > 0, d"'
step same_inode sh -c '[ "$(stat -c %i /vservers/g1/usr/bin/tool)" = "$(stat -c %i /vservers/g2/usr/bin/tool)" ] && stat -c "inode %i links %h" /vservers/g1/usr/bin/tool'
step flags_immutable_ixunlink sh -c 'f=$(flags_of /vservers/g1/usr/bin/tool); printf "flags %#x\\n" "$f"; [ $((f & 0x08000010)) -eq $((0x08000010)) ]'
export before="$(sha256sum </vservers/g2/usr/bin/tool)"
step write_denied not sh -c 'echo tampered >>/vservers/g1/usr/bin/tool'
step chmod_denied not chmod 777 /vservers/g1/usr/bin/tool
step guest_update_rename_over sh -c 'printf "tool version 2\n" >/vservers/g1/usr/bin/tool.dpkg-new && mv /vservers/g1/usr/bin/tool.dpkg-new /vservers/g1/usr/bin/tool'
step guest_sees_update grep -q 'version 2' /vservers/g1/usr/bin/tool
step other_guest_unchanged sh -c '[ "$(sha256sum </vservers/g2/usr/bin/tool)" = "$before" ]'
step guest_unlink_unified sh -c 'rm /vservers/g2/usr/lib/json/encoder.py && [ ! -e /vservers/g2/usr/lib/json/encoder.py ] && [ -e /vservers/g1/usr/lib/json/encoder.py ]'
step store_verifies ifc unify --verify --store /vservers/.hash

echo "UNIFY-DEMO-SUMMARY passed=$passed failed=$failed"
sync
umount /vservers 2>/dev/null
# RB_AUTOBOOT: qemu runs with -no-reboot, so this ends the VM.
python3 -c 'import ctypes, os; os.sync(); ctypes.CDLL(None).reboot(0x01234567)'
