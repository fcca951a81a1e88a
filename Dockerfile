# Sidelane's images, in one multi-stage build:
#
#   docker build --target sidelane -t ghcr.io/sidelane/sidelane:0.1.0 .
#   docker build --target ovn      -t ghcr.io/sidelane/ovn:0.1.0 .
#
# `sidelane` holds the controller, the agent, the CNI plugin (installed on nodes as `kube-ovn` by
# the agent's init container) and the `sidelane` command line. `ovn` holds OVS and OVN from
# Debian, for deploy/'s ovn-central Deployment and ovn-node DaemonSet. The toolchain follows
# `cargo xtask setup`: stable for the workspace, nightly with rust-src for the eBPF object, and
# bpf-linker linked against the nightly toolchain's own libLLVM.

ARG DEBIAN=bookworm

FROM rust:1.95-${DEBIAN} AS build
RUN rustup toolchain install nightly --profile minimal --component rust-src
# bpf-linker against nightly's libLLVM (see ../shared/notes/machine-facts.md).
RUN set -eux; \
    lib="$(rustc +nightly --print sysroot)/lib"; \
    soname="$(basename "$lib"/libLLVM.so.*)"; \
    major="$(echo "$soname" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"; \
    mkdir -p /opt/llvm/lib; \
    ln -s "$lib/$soname" /opt/llvm/lib/libLLVM.so; \
    ln -s "$lib/$soname" "/opt/llvm/lib/$soname"; \
    LLVM_PREFIX=/opt/llvm cargo install --locked bpf-linker --no-default-features --features "llvm-$major"
WORKDIR /src
COPY . .
# agent/build.rs builds the eBPF object (agent-ebpf) with nightly and bpf-linker.
RUN cargo build --release --locked \
        --bin sidelane-controller --bin sidelane-agent --bin sidelane --bin sidelane-cni \
    && mkdir -p /out \
    && cp target/release/sidelane-controller target/release/sidelane-agent \
          target/release/sidelane target/release/sidelane-cni /out/

FROM debian:${DEBIAN}-slim AS sidelane
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The controller runs as this user; the agent runs as root with the capabilities deploy/ grants.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sidelane-controller"]

FROM debian:${DEBIAN}-slim AS ovn
RUN apt-get update \
    && apt-get install -y --no-install-recommends openvswitch-switch ovn-central ovn-host \
    && rm -rf /var/lib/apt/lists/*
