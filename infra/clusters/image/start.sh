#!/bin/bash
# A RunPod pod's start: RunPod passes the account's SSH public keys as $PUBLIC_KEY (its images' convention), and
# the provider's entrypoint (infra/clusters/runpod/provider.py: SIGTERM_ENTRYPOINT) runs this script. Host keys
# are generated here, per pod: a key baked into the image would be the same on every pod, and pinning it
# (infra/clusters/hostkeys.py) would then tell no pod from another.
set -eu
mkdir -p /root/.ssh /run/sshd
chmod 700 /root/.ssh
if [ -n "${PUBLIC_KEY:-}" ]; then
  printf '%s\n' "$PUBLIC_KEY" >> /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
fi
ssh-keygen -A
exec /usr/sbin/sshd -D -e
