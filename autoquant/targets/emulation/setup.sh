#!/bin/bash
# Prepare an "emulated Arm" onnxruntime environment on an x86-64 Debian 12 host:
#   - qemu-aarch64 (dynamic, Debian qemu-user: has TCG plugin support)
#   - an arm64 Debian bookworm python3 tree (no debootstrap, no chroot, no
#     binfmt: arm64 .debs unpacked with dpkg-deb, used via qemu -L)
#   - aarch64 onnxruntime + numpy wheels installed into it (host pip)
#   - instruction-counting TCG plugins built against the qemu-plugin.h of the
#     installed qemu-user's exact Debian source version
#   - one "machine" root per emulated CPU: symlinks to the shared tree plus a
#     fake /proc/cpuinfo and /sys/devices/system/cpu matching that CPU (without
#     them onnxruntime's cpuinfo reads the x86 host's files and segfaults).
# Idempotent: every step is skipped when its output exists. Needs root only to
# apt-get install qemu-user (and optionally libglib2.0-dev for upstream insn.c).
#
# Environment: EMU_DIR (default ~/.cache/autoquant/emulation), ORT_VERSION /
# NUMPY_VERSION / LITERT_VERSION (default: the host's installed versions), CPUS (default below),
# MIRROR and SECURITY_MIRROR (default: the Debian mirrors this host's apt uses).
set -euo pipefail

EMU_DIR=${EMU_DIR:-$HOME/.cache/autoquant/emulation}
# The host's own Debian mirrors, from its apt sources (deb822 or one-line format).
host_uris() {
    {
        cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' | tr ' ' '\n'
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p'
    } || true
}
URIS=$(host_uris)
MIRROR=${MIRROR:-$(printf '%s\n' "$URIS" | grep -v security | sed -n 1p || true)}
SECURITY_MIRROR=${SECURITY_MIRROR:-$(printf '%s\n' "$URIS" | grep security | sed -n 1p || true)}
[ -n "$MIRROR" ] || { echo "no Debian mirror found in this host's apt sources: set MIRROR" >&2; exit 1; }
[ -n "$SECURITY_MIRROR" ] || SECURITY_MIRROR="$MIRROR-security"
SUITE=bookworm
PYVER=3.11
CPUS=${CPUS:-"cortex-a72 cortex-a76"}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
HERE=$(cd "$(dirname "$0")" && pwd)

host_py() { python3 "$@"; }
ORT_VERSION=${ORT_VERSION:-$(host_py -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')}
NUMPY_VERSION=${NUMPY_VERSION:-$(host_py -c 'import importlib.metadata as m; print(m.version("numpy"))')}
# LiteRT goes in when the host has it (the litert runtime); empty: onnxruntime only.
LITERT_VERSION=${LITERT_VERSION-$(host_py -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))' 2>/dev/null || true)}

t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
mkdir -p "$EMU_DIR"

# --- 1. qemu-user (dynamic build, plugin-capable) -------------------------
if ! command -v qemu-aarch64 >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "qemu-user is not installed and this is not root: install Debian's qemu-user first" >&2
        exit 3
    fi
    step "apt-get install qemu-user"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user >/dev/null
fi
qemu-aarch64 --help | grep -q -- '^-plugin' || { echo "qemu-aarch64 lacks -plugin" >&2; exit 1; }
QEMU_SRC_VERSION=$(dpkg-query -W -f='${source:Version}' qemu-user)   # e.g. 1:7.2+dfsg-7+deb12u18

# Private apt configuration (own lists/cache/status: the host's dpkg
# architectures and sources are left alone; runs unprivileged too).
private_apt() {  # $1 = dir, $2.. = apt-get args
    local d=$1; shift
    apt-get -q -o Dir::State="$d" -o Dir::State::Lists="$d/lists" \
        -o Dir::State::status="$d/status" -o Dir::Cache="$d" \
        -o Dir::Cache::Archives="$d/archives" \
        -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts="$d/none" \
        -o Dir::Etc::Preferences="$d/none/p" -o Dir::Etc::PreferencesParts="$d/none" \
        -o Debug::NoLocking=1 -o APT::Sandbox::User=root "$@"
}
new_private_apt() {  # $1 = dir, $2 = sources.list text
    mkdir -p "$1/lists/partial" "$1/archives/partial" "$1/none"
    touch "$1/status"
    printf '%s\n' "$2" > "$1/sources.list"
}

# --- 2. arm64 root tree: python3 + libstdc++ ------------------------------
ROOT=$EMU_DIR/rootfs
if [ ! -e "$ROOT/.done" ]; then
    step "arm64 python3 tree"
    A=$EMU_DIR/apt-arm64
    new_private_apt "$A" "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main
deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE-updates main
deb [arch=arm64 signed-by=$KEYRING] $SECURITY_MIRROR $SUITE-security main"
    private_apt "$A" -o APT::Architecture=arm64 -o APT::Architectures::=arm64 update >/dev/null
    private_apt "$A" -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
        install -y -d --no-install-recommends python3 libstdc++6 >/dev/null
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    for deb in "$A"/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
    rm -rf "$A"   # the unpacked tree is what is kept
    touch "$ROOT/.done"
fi

# --- 3. aarch64 wheels -----------------------------------------------------
SITE=$ROOT/usr/lib/python3/dist-packages   # on the emulated python's sys.path
PLAT=(--platform manylinux_2_36_aarch64 --platform manylinux_2_28_aarch64
      --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64
      --platform manylinux2014_aarch64)
if [ ! -e "$SITE/.done-ort-$ORT_VERSION-np-$NUMPY_VERSION" ]; then
    step "wheels onnxruntime==$ORT_VERSION numpy==$NUMPY_VERSION"
    mkdir -p "$EMU_DIR/wheels"
    host_py -m pip download -q -d "$EMU_DIR/wheels" --only-binary=:all: "${PLAT[@]}" \
        --python-version $PYVER --implementation cp --abi cp311 \
        "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION"
    rm -rf "$SITE"; mkdir -p "$SITE"
    host_py -m pip install -q --no-index --find-links "$EMU_DIR/wheels" --target "$SITE" \
        --only-binary=:all: "${PLAT[@]}" --python-version $PYVER --implementation cp \
        --abi cp311 --no-compile "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION" \
        2>&1 | grep -v -E "Running pip as the 'root' user|is ignored" || true
    rm -rf "$SITE/bin" "$EMU_DIR/wheels"
    # Byte-compile once with the emulated interpreter: later runs never write
    # .pyc files (PYTHONDONTWRITEBYTECODE), so every run executes the same code.
    step "compileall (emulated)"
    qemu-aarch64 -L "$ROOT" -cpu cortex-a72 -E PYTHONHASHSEED=0 "$ROOT/usr/bin/python$PYVER" \
        -m compileall -q -j 1 "$ROOT/usr/lib/python$PYVER" "$SITE" >/dev/null
    touch "$SITE/.done-ort-$ORT_VERSION-np-$NUMPY_VERSION"
fi

# --- 3b. LiteRT (XNNPACK) for the litert runtime, when the host has it ------
if [ -n "$LITERT_VERSION" ] && [ ! -e "$SITE/.done-litert-$LITERT_VERSION" ]; then
    step "wheel ai-edge-litert==$LITERT_VERSION"
    mkdir -p "$EMU_DIR/wheels"
    host_py -m pip download -q -d "$EMU_DIR/wheels" --only-binary=:all: "${PLAT[@]}" \
        --python-version $PYVER --implementation cp --abi cp311 \
        "ai-edge-litert==$LITERT_VERSION" "numpy==$NUMPY_VERSION"
    host_py -m pip install -q --no-index --find-links "$EMU_DIR/wheels" --target "$SITE" --upgrade \
        --only-binary=:all: "${PLAT[@]}" --python-version $PYVER --implementation cp \
        --abi cp311 --no-compile "ai-edge-litert==$LITERT_VERSION" "numpy==$NUMPY_VERSION" \
        2>&1 | grep -v -E "Running pip as the 'root' user|is ignored" || true
    rm -rf "$SITE/bin" "$EMU_DIR/wheels"
    qemu-aarch64 -L "$ROOT" -cpu cortex-a72 -E PYTHONHASHSEED=0 "$ROOT/usr/bin/python$PYVER" \
        -m compileall -q -j 1 "$SITE" >/dev/null
    touch "$SITE/.done-litert-$LITERT_VERSION"
fi

# --- 4. instruction-count plugins -----------------------------------------
PLUG=$EMU_DIR/plugins
if [ ! -e "$PLUG/.done-$QEMU_SRC_VERSION" ]; then
    step "qemu source $QEMU_SRC_VERSION -> plugins"
    S=$EMU_DIR/apt-src
    new_private_apt "$S" "deb-src [signed-by=$KEYRING] $MIRROR $SUITE main
deb-src [signed-by=$KEYRING] $MIRROR $SUITE-updates main
deb-src [signed-by=$KEYRING] $SECURITY_MIRROR $SUITE-security main"
    private_apt "$S" update >/dev/null
    mkdir -p "$S/src"
    (cd "$S/src" && private_apt "$S" source --download-only "qemu=$QEMU_SRC_VERSION" >/dev/null)
    orig=$(ls "$S"/src/qemu_*.orig.tar.xz)
    rm -rf "$PLUG"; mkdir -p "$PLUG"
    # both members sit three levels down: qemu-7.2.0/{include/qemu,tests/plugin}/
    tar -xJf "$orig" -C "$PLUG" --wildcards --strip-components=3 \
        '*/include/qemu/qemu-plugin.h' '*/tests/plugin/insn.c'
    rm -rf "$S"
    cp "$HERE/insnmark.c" "$PLUG/"
    gcc -O2 -Wall -shared -fPIC -I"$PLUG" -o "$PLUG/libinsnmark.so" "$PLUG/insnmark.c"
    # Upstream insn.c needs glib headers (libglib2.0-dev); optional.
    if pkg-config --exists glib-2.0 2>/dev/null; then
        gcc -O2 -shared -fPIC -I"$PLUG" $(pkg-config --cflags glib-2.0) \
            -o "$PLUG/libinsn.so" "$PLUG/insn.c"
    fi
    touch "$PLUG/.done-$QEMU_SRC_VERSION"
fi

# --- 5. one machine root per CPU -------------------------------------------
# MIDR values from qemu 7.2 target/arm/cpu64.c; L1d/L1i/L2 sizes and max MHz
# are nominal (not read by anything that changes the instruction stream here).
declare -A MIDR=([cortex-a35]=0x411fd040 [cortex-a53]=0x410fd034 [cortex-a57]=0x411fd070
                 [cortex-a72]=0x410fd083 [cortex-a76]=0x414fd0b1 [neoverse-n1]=0x414fd0c1
                 [a64fx]=0x461f0010 [max]=0x000f0510)
declare -A CACHE=([cortex-a35]="32K 32K 512K 1200" [cortex-a53]="32K 32K 512K 1400"
                  [cortex-a57]="32K 48K 2048K 1900" [cortex-a72]="32K 48K 1024K 1500"
                  [cortex-a76]="64K 64K 512K 2400" [neoverse-n1]="64K 64K 1024K 2600"
                  [a64fx]="64K 64K 8192K 2200" [max]="64K 64K 1024K 2000")
HWCAP_NAMES="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
HWCAP2_NAMES="dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme"
for cpu in $CPUS; do
    M=$EMU_DIR/machines/$cpu
    [ -e "$M/.done" ] && continue
    step "machine $cpu"
    midr=${MIDR[$cpu]:?unknown cpu $cpu}
    read -r l1d l1i l2 mhz <<<"${CACHE[$cpu]}"
    rm -rf "$M"; mkdir -p "$M"
    for d in bin etc lib sbin usr var; do ln -s ../../rootfs/$d "$M/$d"; done
    # Feature names from the HWCAPs qemu gives this CPU (as the kernel would print them).
    features=$(qemu-aarch64 -L "$ROOT" -cpu "$cpu" "$ROOT/usr/bin/python$PYVER" -S -c "
import ctypes
libc = ctypes.CDLL(None); g = libc.getauxval
g.restype = ctypes.c_ulong; g.argtypes = [ctypes.c_ulong]
n1 = '$HWCAP_NAMES'.split(); n2 = '$HWCAP2_NAMES'.split()
h1, h2 = g(16), g(26)
print(' '.join([n for i, n in enumerate(n1) if h1 >> i & 1] + [n for i, n in enumerate(n2) if h2 >> i & 1]))")
    mkdir -p "$M/proc/1" "$M/proc/sys/kernel"
    printf 'processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: 0x%02x\nCPU architecture: 8\nCPU variant\t: 0x%x\nCPU part\t: 0x%03x\nCPU revision\t: %d\n\n' \
        "$features" $(( midr >> 24 & 0xff )) $(( midr >> 20 & 0xf )) $(( midr >> 4 & 0xfff )) $(( midr & 0xf )) \
        > "$M/proc/cpuinfo"
    echo "0::/" > "$M/proc/1/cgroup"
    echo "6.1.0" > "$M/proc/sys/kernel/osrelease"
    C=$M/sys/devices/system/cpu
    mkdir -p "$C/cpu0/cpufreq" "$C/cpu0/topology" "$M/sys/bus/pci/devices"
    echo 0 > "$C/kernel_max"
    for f in possible present online; do echo 0 > "$C/$f"; done
    echo $(( mhz * 1000 )) > "$C/cpu0/cpufreq/cpuinfo_max_freq"
    echo $(( mhz * 1000 )) > "$C/cpu0/cpufreq/cpuinfo_min_freq"
    for f in physical_package_id core_id cluster_id; do echo 0 > "$C/cpu0/topology/$f"; done
    for f in cluster_cpus_list core_siblings_list thread_siblings_list package_cpus_list core_cpus_list; do
        echo 0 > "$C/cpu0/topology/$f"
    done
    i=0
    for spec in "1 Data $l1d" "1 Instruction $l1i" "2 Unified $l2"; do
        read -r lvl typ size <<<"$spec"
        mkdir -p "$C/cpu0/cache/index$i"
        echo "$lvl" > "$C/cpu0/cache/index$i/level"
        echo "$typ" > "$C/cpu0/cache/index$i/type"
        echo "$size" > "$C/cpu0/cache/index$i/size"
        echo 0 > "$C/cpu0/cache/index$i/shared_cpu_list"
        i=$((i + 1))
    done
    touch "$M/.done"
done

# --- 6. smoke test ----------------------------------------------------------
cpu=${CPUS%% *}
M=$EMU_DIR/machines/$cpu
qemu-aarch64 -L "$M" -cpu "$cpu" -E ORT_DISABLE_TELEMETRY=1 -E PYTHONDONTWRITEBYTECODE=1 \
    "$M/usr/bin/python$PYVER" -c "import onnxruntime as o, numpy as n, platform; print('ok', platform.machine(), o.__version__, n.__version__)"
step "done; $(du -sh "$EMU_DIR" | cut -f1) in $EMU_DIR"
