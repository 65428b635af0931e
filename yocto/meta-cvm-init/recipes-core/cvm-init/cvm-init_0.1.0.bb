SUMMARY = "Static Rust PID 1 for Intel TDX confidential VMs"
DESCRIPTION = "cvm-init mounts the base system, checks the kernel contract, measures the \
               dstack app identity into RTMR3, serves the dstack guest API and runs the \
               workloads, as one static binary that is /init of the initramfs."

require recipes-core/cvm-init/cvm-init-common.inc

CARGO_SRC_DIR = "init/pid1"

# Static glibc PIE, getrandom through the syscall (PID 1 runs before /dev exists): the flags
# of .cargo/config.toml and STATIC_RUSTFLAGS in xtask/src/dist.rs.
RUSTFLAGS:append = " -Ctarget-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\" ${CVM_INIT_REPRO_RUSTFLAGS}"
# The size flags of the release init (SIZE_RUSTFLAGS in xtask/src/dist.rs): DT_RELR relative
# relocations, identical code folding by the linker.
RUSTFLAGS:append = " -Clink-arg=-Wl,-z,pack-relative-relocs -Clink-arg=-Wl,--icf=safe"

do_install() {
    install -d ${D}${base_sbindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/cvm-init ${D}${base_sbindir}/cvm-init
}

# cvm-init-initramfs packs this binary as /init: stage it for that recipe.
SYSROOT_DIRS += "${base_sbindir}"

# PID 1 of the guest image only: there is no native or SDK use.
BBCLASSEXTEND = ""
