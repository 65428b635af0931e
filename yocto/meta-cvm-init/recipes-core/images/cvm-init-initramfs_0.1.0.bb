SUMMARY = "The cvm-init initramfs: /init plus what initramfs/manifest.toml lists"
DESCRIPTION = "Packs cvm-init as /init with the directories and nodes of the workspace's \
               initramfs/manifest.toml, using the same deterministic builder as cargo \
               xtask dist --no-modules (the production kernel has every driver built in, \
               so the image carries no modules)."
DEPENDS = "cvm-init cvm-initramfs-native"

# The source tree: `file` and `ca_bundle` entries are relative to its initramfs/ directory.
require recipes-core/cvm-init/cvm-init-source.inc

inherit deploy nopackages

# Every entry of initramfs/manifest.toml except `modules` (built into the production kernel by
# recipes-kernel/linux/files/cvm-init.cfg), one word each:
#   dir:PATH:MODE  node:PATH:char:MAJOR:MINOR:MODE  symlink:PATH:TARGET
#   file:PATH:MODE:SRC  ca_bundle:SRC   (MODE octal or "auto"; SRC relative to initramfs/)
# `cargo xtask yocto-check` fails when this list and the manifest differ.
CVM_INITRAMFS_ENTRIES = "\
    dir:/dev:0755 \
    dir:/proc:0755 \
    dir:/sys:0755 \
    dir:/run:0755 \
    dir:/tmp:1777 \
    dir:/mnt:0755 \
    node:/dev/console:char:5:1:0600 \
"

# `cargo xtask dist` defaults SOURCE_DATE_EPOCH to 0 and compresses with gzip: the same here, so
# that the same cvm-init binary gives the same initramfs bytes in both builds.
CVM_INITRAMFS_SOURCE_DATE_EPOCH ?= "0"
CVM_INITRAMFS_COMPRESSION ?= "gzip"
CVM_INITRAMFS_NAME = "cvm-init-initramfs.cpio.gz"

def cvm_initramfs_manifest(entries, srcdir):
    """The cvm-initramfs manifest (TOML) for CVM_INITRAMFS_ENTRIES."""
    out = []
    for entry in entries.split():
        kind, _, rest = entry.partition(":")
        fields = rest.split(":")
        if kind == "dir" and len(fields) == 2:
            out.append('[[dir]]\ndest = "%s"\nmode = 0o%s\n' % (fields[0], fields[1]))
        elif kind == "node" and len(fields) == 5 and fields[1] == "char":
            out.append('[[node]]\ndest = "%s"\ntype = "char"\nmajor = %s\nminor = %s\nmode = 0o%s\n'
                       % (fields[0], fields[2], fields[3], fields[4]))
        elif kind == "symlink" and len(fields) == 2:
            out.append('[[symlink]]\ndest = "%s"\ntarget = "%s"\n' % (fields[0], fields[1]))
        elif kind == "file" and len(fields) == 3:
            mode = "" if fields[1] == "auto" else "mode = 0o%s\n" % fields[1]
            out.append('[[file]]\ndest = "%s"\nsrc = "%s/%s"\n%s'
                       % (fields[0], srcdir, fields[2], mode))
        elif kind == "ca_bundle" and len(fields) == 1:
            out.insert(0, 'ca_bundle = "%s/%s"\n' % (srcdir, fields[0]))
        else:
            bb.fatal("CVM_INITRAMFS_ENTRIES: cannot parse %s" % entry)
    return "\n".join(out)

python do_compile() {
    import subprocess
    builddir = d.getVar("B")
    manifest = os.path.join(builddir, "manifest.toml")
    with open(manifest, "w") as f:
        f.write(cvm_initramfs_manifest(d.getVar("CVM_INITRAMFS_ENTRIES"),
                                       os.path.join(d.getVar("S"), "initramfs")))
    init = d.getVar("RECIPE_SYSROOT") + d.getVar("base_sbindir") + "/cvm-init"
    output = os.path.join(builddir, d.getVar("CVM_INITRAMFS_NAME"))
    subprocess.run([os.path.join(d.getVar("STAGING_BINDIR_NATIVE"), "cvm-initramfs"),
                    "--manifest", manifest, "--init", init,
                    "--source-date-epoch", d.getVar("CVM_INITRAMFS_SOURCE_DATE_EPOCH"),
                    "--compression", d.getVar("CVM_INITRAMFS_COMPRESSION"),
                    "--output", output], check=True)
}
do_compile[cleandirs] = "${B}"

do_deploy() {
    install -m 0644 ${B}/${CVM_INITRAMFS_NAME} ${DEPLOYDIR}/${CVM_INITRAMFS_NAME}
    install -m 0644 ${RECIPE_SYSROOT}${base_sbindir}/cvm-init ${DEPLOYDIR}/cvm-init
    (cd ${DEPLOYDIR} && sha256sum cvm-init ${CVM_INITRAMFS_NAME} > cvm-init-SHA256SUMS)
}
addtask deploy after do_compile before do_build

# An artefact of the target image, built once per machine.
BBCLASSEXTEND = ""
