# The marrow image: node-proxy (also the CNI installer and `ca serve`), waypoint, redirect-cni and
# the eBPF object. The DaemonSet and the CA run the entrypoint; the waypoint Deployments the
# controller makes run /usr/bin/waypoint as their command.
# Nothing is compiled here; the contents come from `cargo xtask image` (release binaries,
# redirect-cni linked statically, the eBPF object), laid out in target/image/:
#
#   cargo xtask image                                  # build + lay out + check
#   docker build -t marrow/node-proxy:0.1.0 .          # where a Docker engine runs
#
# The development machines have no Docker engine, so this file is never built there;
# `cargo xtask image` (or `cargo xtask image --check` on an existing layout) verifies everything
# it copies: files, modes, ELF kinds, redirect-cni linked statically, both binaries answering.
# The image is for the build machine's architecture.

# glibc and libgcc_s for node-proxy (Debian 12's, as on the build machine); no shell, no
# package manager. Root by default: the proxy needs it (manifests/daemonset.yaml says why).
FROM gcr.io/distroless/cc-debian12

COPY target/image/ /

ENTRYPOINT ["/usr/bin/node-proxy"]
CMD ["run"]
