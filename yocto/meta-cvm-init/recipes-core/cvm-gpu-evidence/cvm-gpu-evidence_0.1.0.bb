SUMMARY = "NVIDIA GPU attestation evidence helper of cvm-init"
DESCRIPTION = "A dynamically linked helper that collects confidential-computing evidence \
               from NVIDIA GPUs through NVML; the static PID 1 cannot dlopen NVML, so it \
               runs this helper."

require recipes-core/cvm-init/cvm-init-common.inc

CARGO_SRC_DIR = "init/gpu-helper"
# Dynamically linked on purpose (NVML is a shared library of the NVIDIA driver): only the
# reproducibility flags, no crt-static.
RUSTFLAGS:append = " ${CVM_INIT_REPRO_RUSTFLAGS}"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/cvm-gpu-evidence ${D}${bindir}/cvm-gpu-evidence
}

# Runs inside the guest image next to the NVIDIA driver only.
BBCLASSEXTEND = ""
