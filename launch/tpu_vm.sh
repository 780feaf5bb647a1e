#!/usr/bin/env bash
# Train on every host of a Cloud TPU VM slice (v4-32, v5p-64, v6e-16, ...), from your machine.
#
#   launch/tpu_vm.sh setup NAME ZONE                  # copy this repository to every host, install
#   launch/tpu_vm.sh train NAME ZONE gs://BUCKET/RUN --config experiments/gpt.py:gpt2:124M --config.mesh.fsdp=-1
#
# `gcloud ... --worker=all` runs the same command on every host; JAX finds the slice (which
# host this is, how many, the coordinator) from the TPU VM's metadata server. Every host must
# see the workdir: a gs:// URL (the VMs' service account needs write access to the bucket),
# or a folder shared by all of them. Run `train` again to resume from the newest checkpoint.
set -euo pipefail

usage() { echo "usage: $0 setup NAME ZONE | train NAME ZONE WORKDIR [run.py train flags...]" >&2; exit 2; }
[ $# -ge 3 ] || usage
step=$1 name=$2 zone=$3
shift 3
dir=${SSL_JAX_REMOTE_DIR:-ssl_jax}    # where the repository goes on each host (under the login's home)

case $step in
  setup)
    here=$(cd "$(dirname "$0")/.." && pwd)
    gcloud compute tpus tpu-vm scp --recurse "$here" "$name:$dir" --zone="$zone" --worker=all
    gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all \
      --command="cd $dir && python3 -m pip install -q -r requirements.txt 'jax[tpu]'"
    ;;
  train)
    [ $# -ge 1 ] || usage
    workdir=$1
    shift
    train=(python3 run.py train --workdir "$workdir" "$@")
    gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="cd $dir && ${train[*]@Q}"
    ;;
  *) usage ;;
esac
