SUMMARY = "Deterministic initramfs builder of cvm-init"
DESCRIPTION = "cvm-initramfs writes a sorted newc cpio with fixed owners, modes, inode \
               numbers and mtimes (SOURCE_DATE_EPOCH), gzip'd without a timestamp: the \
               builder that cargo xtask dist uses."

require recipes-core/cvm-init/cvm-init-common.inc

CARGO_SRC_DIR = "initramfs"
RUSTFLAGS:append = " ${CVM_INIT_REPRO_RUSTFLAGS}"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/cvm-initramfs ${D}${bindir}/cvm-initramfs
}

BBCLASSEXTEND = "native"
