# Everything cvm-init needs, built in (generated from init/core/src/kernel_contract.rs; the init
# checks the same list at boot from /proc/config.gz, which the fragment enables). Active only
# with the `cvm-init` override (DISTROOVERRIDES, see yocto/kas/cvm-init.yml), so adding the
# layer alone changes no build.
FILESEXTRAPATHS:prepend:cvm-init := "${THISDIR}/files:"
SRC_URI:append:cvm-init = " file://cvm-init.cfg"
