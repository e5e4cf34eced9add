#!/bin/sh
# Best effort: make Debian's OpenSSH server available for tests/test_bench_ssh.py, which starts its own
# sshd on a loopback port (the system service is never started or enabled by this script). Never fails:
# when sshd cannot be installed (not root, no apt, no network) those tests skip and say why.
[ -x /usr/sbin/sshd ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-sshd: /usr/sbin/sshd missing and cannot install it here (needs root and apt); ssh tests will skip" >&2
    exit 0
fi
# keep the package's maintainer scripts from starting an sshd on port 22 (policy-rc.d exit 101 = "not allowed")
created=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created=1
fi
install() {
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q --no-install-recommends openssh-server \
        >/dev/null 2>&1
}
install || { timeout 300 apt-get update -q >/dev/null 2>&1 && install; } \
    || echo "ensure-sshd: could not install openssh-server; ssh tests will skip" >&2
[ -n "$created" ] && rm -f /usr/sbin/policy-rc.d
exit 0
