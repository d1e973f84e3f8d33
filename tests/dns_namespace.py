"""Names that resolve to refused addresses, for real: a user, mount and network namespace in
which a hosts file of our own is bind-mounted over /etc/hosts and the refused addresses are
live on the loopback interface.

Started by tests/test_security.py as `unshare -rmn python -m tests.dns_namespace WORKDIR`: it
sets the namespace up, then runs the cases in tests/dns_namespace_cases.py (real server, real
HTTP, real resolver: ahv's own getaddrinfo reads this /etc/hosts) with pytest, and exits with
pytest's status, or SETUP_FAILED (with the reason printed) when the namespace cannot be set up.
Nothing here touches the machine's own /etc/hosts or network: it refuses to run outside a user
namespace with a network namespace of its own.
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path

HOSTS_ENV = "AHV_TEST_NETNS_HOSTS"  # set only inside the namespace: the bind-mounted file
SETUP_FAILED = 77

ALLOWED_NAME = "allowed.test"  # resolves to 127.0.0.1, the one address the test config allows
# Names resolving to refused addresses: name -> (the refused address, the guard's reason).
REFUSED: dict[str, tuple[str, str]] = {
    "private10.test": ("10.20.30.40", "private"),
    "private172.test": ("172.16.5.5", "private"),
    "private192.test": ("192.168.7.7", "private"),
    "linklocal.test": ("169.254.10.10", "link-local"),
    "metadata.test": ("169.254.169.254", "link-local"),
    "metadata.google.internal": ("169.254.169.254", "link-local"),
    "metadata6.test": ("fd00:ec2::254", "private"),
    "mapped.test": ("::ffff:10.20.30.40", "private"),
    "mapped-metadata.test": ("::ffff:169.254.169.254", "link-local"),
    "loopback2.test": ("127.0.0.2", "loopback"),
    # One allowed address and one refused: the refused one is enough.
    "mixed.test": ("10.20.30.40", "private"),
}
# Addresses a name is re-pointed to between submit and fetch or delivery.
REPOINT_TO = [
    "10.20.30.40",
    "172.16.5.5",
    "192.168.7.7",
    "169.254.169.254",
    "fd00:ec2::254",
    "::ffff:169.254.169.254",
    "127.0.0.2",
]


def repoint_names(prefix: str) -> list[str]:
    """One name per REPOINT_TO address; they resolve to 127.0.0.1 until re-pointed."""
    return [f"{prefix}-{i}.test" for i in range(len(REPOINT_TO))]


REPOINTED = [*repoint_names("input"), *repoint_names("hook")]


def hosts_text(repointed: dict[str, str] | None = None) -> str:
    """The namespace's /etc/hosts; `repointed` maps names of REPOINTED to new addresses."""
    lines = ["127.0.0.1 localhost", f"127.0.0.1 {ALLOWED_NAME}", "127.0.0.1 mixed.test"]
    lines += [f"{address} {name}" for name, (address, _) in REFUSED.items()]
    lines += [f"{(repointed or {}).get(name, '127.0.0.1')} {name}" for name in REPOINTED]
    return "\n".join(lines) + "\n"


def live_addresses() -> list[str]:
    """The refused addresses put on `lo`, so that a request reaching them would succeed."""
    found = set()
    for address in [*(a for a, _ in REFUSED.values()), *REPOINT_TO]:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # reached through the IPv4 address
        if not ip.is_loopback:  # 127/8 is on lo already
            found.add(str(ip))
    return sorted(found)


def require_isolation() -> None:
    """Refuse to touch /etc/hosts or interfaces unless this is a new user namespace (uid 0
    mapped from another uid) with a network namespace holding only `lo`."""
    uid_map = Path("/proc/self/uid_map").read_text().split()
    if uid_map[:3] == ["0", "0", "4294967295"] or os.getuid() != 0:
        raise RuntimeError(f"not in a user namespace of its own (uid_map {uid_map})")
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        raise RuntimeError(f"not in a network namespace of its own (interfaces {interfaces})")


def add_address(label: str, address: str) -> None:
    """`ip addr add ADDRESS dev lo`, without iproute2 (SIOCSIFADDR, as ifconfig does)."""
    siocsifaddr, siocsifnetmask = 0x8916, 0x891C
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for request, value in ((siocsifaddr, ip.packed), (siocsifnetmask, b"\xff" * 4)):
                sockaddr = struct.pack("HH4s8x", socket.AF_INET, 0, value)
                fcntl.ioctl(sock, request, struct.pack("16s16s", label.encode(), sockaddr))
    else:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sIi", ip.packed, 128, socket.if_nametoindex("lo"))
            fcntl.ioctl(sock, siocsifaddr, request)


def bind_mount(source: Path, target: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    ms_bind = 4096
    if libc.mount(str(source).encode(), str(target).encode(), None, ms_bind, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount --bind {source} {target}: {os.strerror(errno)}")


def set_up(workdir: Path) -> Path:
    from tests.fuzz_run import loopback_up

    require_isolation()
    loopback_up()
    for number, address in enumerate(live_addresses(), start=1):
        add_address(f"lo:{number}", address)
    hosts = workdir / "hosts"
    hosts.write_text(hosts_text())
    bind_mount(hosts, Path("/etc/hosts"))
    for name, (address, _) in REFUSED.items():
        found = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
        if address not in found:
            raise OSError(f"{name} resolves to {sorted(found)}, not {address}")
    return hosts


def main() -> int:
    workdir = Path(sys.argv[1])
    try:
        hosts = set_up(workdir)
    except OSError as exc:
        print(f"namespace setup failed: {exc}")
        return SETUP_FAILED
    os.environ[HOSTS_ENV] = str(hosts)
    import pytest

    cases = Path(__file__).with_name("dns_namespace_cases.py")
    args = ["-q", "-p", "no:cacheprovider", f"--basetemp={workdir / 'pytest'}", str(cases)]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main())
