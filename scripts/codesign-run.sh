#!/bin/sh
# Cargo's runner for x86_64-apple-darwin (.cargo/config.toml): signs the
# binary cargo built with the hypervisor entitlement (scripts/hv.entitlements;
# without it every Hypervisor.framework call answers HV_DENIED), then runs it
# with cargo's arguments. An ad-hoc signature (--sign -) is enough for the
# entitlement on the Mac that built the binary.
set -eu
if [ "$#" -lt 1 ]; then
    echo "codesign-run.sh: usage: codesign-run.sh BINARY [ARGS...]" >&2
    exit 2
fi
binary=$1
shift
entitlements=$(dirname "$0")/hv.entitlements
if ! log=$(codesign --sign - --entitlements "$entitlements" --force "$binary" 2>&1); then
    echo "codesign-run.sh: codesign failed for $binary:" >&2
    echo "$log" >&2
    exit 2
fi
exec "$binary" "$@"
