"""The host control's verdicts (nodeguard/controls/host_checks.py); its sshd reading is tested in
test_sshd_config.py.

The daemon's TLS material, with real certificates and keys made here by `cryptography`. Whether
the data root is on dm-crypt: the real mount table for a sandbox, a built sysfs tree for the
stacks. A real dm-crypt device needs cryptsetup, loop devices and device-mapper, none of which a
test may create on this machine; the sysfs layout (`/sys/dev/block/MAJ:MIN`, `dm/uuid`,
`slaves/`) is therefore built as files and symlinks inside the sandbox host root, exactly as the
kernel lays it out.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from nodeguard.controls.base import Context
from nodeguard.controls.host_checks import HostControl
from nodeguard.host import HostRoot
from nodeguard.policy import load_policy, parse_policy
from nodeguard.structs import Finding, Status
from tests.support.sandbox import Sandbox, require_tool

NOW = dt.datetime.now(dt.UTC)
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_cert(key: Key, *, cn: str, issuer_key: Key | None = None, issuer_cn: str | None = None,
              ca: bool | None = False, not_before: dt.datetime | None = None,
              not_after: dt.datetime | None = None) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or NOW - dt.timedelta(days=1))
               .not_valid_after(not_after or NOW + dt.timedelta(days=365)))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(obj: x509.Certificate | Key) -> str:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class Material:
    """A CA and a server certificate it issued; each test spoils one part."""

    def __init__(self) -> None:
        self.ca_key = rsa_key()
        self.ca = make_cert(self.ca_key, cn="nodeguard test CA", ca=True)
        self.key: Key = rsa_key()
        self.cert = make_cert(self.key, cn="dockerd", issuer_key=self.ca_key, issuer_cn="nodeguard test CA")

    def install(self, sb: Sandbox, daemon_paths: bool = False) -> None:
        sb.write("/etc/docker/tls/ca.pem", pem(self.ca), 0o444)
        sb.write("/etc/docker/tls/cert.pem", pem(self.cert), 0o444)
        sb.write("/etc/docker/tls/key.pem", pem(self.key), 0o400)
        # dockerd names paths in its own namespace; a sandboxed daemon names them under the root.
        base = str(sb.path("/etc/docker/tls")) if daemon_paths else "/etc/docker/tls"
        sb.write("/etc/docker/daemon.json", json.dumps({
            "tlsverify": True, "tlscacert": f"{base}/ca.pem", "tlscert": f"{base}/cert.pem",
            "tlskey": f"{base}/key.pem"}))


def tls_findings(sb: Sandbox) -> dict[tuple[str, str | None], Finding]:
    ctx = Context(HostRoot(sb.root), load_policy())
    control = HostControl()
    return {(f.rule, f.subject): f for f in control.evaluate(control.observe(ctx), ctx.policy)
            if f.rule.startswith("tls-")}


def status(found: dict[tuple[str, str | None], Finding]) -> dict[tuple[str, str | None], str]:
    return {k: f.status.value for k, f in found.items()}


def test_good_material_passes_every_rule(sandbox: Sandbox) -> None:
    Material().install(sandbox, daemon_paths=True)
    found = tls_findings(sandbox)
    assert status(found) == {
        ("tls-cert-expiry", "tlscacert"): "pass", ("tls-cert-expiring", "tlscacert"): "pass",
        ("tls-key-size", "tlscacert"): "pass",
        ("tls-cert-expiry", "tlscert"): "pass", ("tls-cert-expiring", "tlscert"): "pass",
        ("tls-key-size", "tlscert"): "pass", ("tls-key-size", "tlskey"): "pass",
        ("tls-key-match", None): "pass", ("tls-ca", None): "pass", ("tls-cert-issued-by-ca", None): "pass",
    }
    assert found[("tls-key-match", None)].path == "/etc/docker/tls/key.pem"


def test_expired_certificate_fails(sandbox: Sandbox) -> None:
    m = Material()
    m.cert = make_cert(m.key, cn="dockerd", issuer_key=m.ca_key, issuer_cn="nodeguard test CA",
                       not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=2))
    m.install(sandbox)
    found = tls_findings(sandbox)
    expiry = found[("tls-cert-expiry", "tlscert")]
    assert expiry.status is Status.FAIL and "expired on" in expiry.message
    assert found[("tls-cert-expiring", "tlscert")].status is Status.SKIP
    assert found[("tls-cert-expiry", "tlscacert")].status is Status.PASS


def test_certificate_near_expiry_warns_at_the_policy_threshold(sandbox: Sandbox) -> None:
    m = Material()
    m.cert = make_cert(m.key, cn="dockerd", issuer_key=m.ca_key, issuer_cn="nodeguard test CA",
                       not_after=NOW + dt.timedelta(days=10))
    m.install(sandbox)
    found = tls_findings(sandbox)
    assert found[("tls-cert-expiry", "tlscert")].status is Status.PASS
    soon = found[("tls-cert-expiring", "tlscert")]
    assert soon.status is Status.FAIL and soon.severity.value == "low"
    assert 9 <= soon.details["days_left"] <= 10


def test_mismatched_key_fails(sandbox: Sandbox) -> None:
    m = Material()
    m.key = rsa_key()  # a different key than the certificate's
    m.install(sandbox)
    found = tls_findings(sandbox)
    assert found[("tls-key-match", None)].status is Status.FAIL
    assert found[("tls-cert-issued-by-ca", None)].status is Status.PASS


def test_a_ca_that_is_not_a_ca_fails(sandbox: Sandbox) -> None:
    m = Material()
    m.ca = make_cert(m.ca_key, cn="nodeguard test CA", ca=False)  # basicConstraints CA:FALSE
    m.install(sandbox)
    found = tls_findings(sandbox)
    assert found[("tls-ca", None)].status is Status.FAIL
    assert found[("tls-cert-issued-by-ca", None)].status is Status.FAIL  # no *CA* issued it


def test_weak_keys_fail(sandbox: Sandbox) -> None:
    m = Material()
    m.key = rsa_key(1024)
    m.cert = make_cert(m.key, cn="dockerd", issuer_key=m.ca_key, issuer_cn="nodeguard test CA")
    m.install(sandbox)
    found = tls_findings(sandbox)
    assert found[("tls-key-size", "tlskey")].status is Status.FAIL
    assert found[("tls-key-size", "tlscert")].status is Status.FAIL
    assert found[("tls-key-match", None)].status is Status.PASS

    m.key = ec.generate_private_key(ec.SECP224R1())
    m.cert = make_cert(m.key, cn="dockerd", issuer_key=m.ca_key, issuer_cn="nodeguard test CA")
    m.install(sandbox)
    assert tls_findings(sandbox)[("tls-key-size", "tlskey")].status is Status.FAIL
    m.key = ec.generate_private_key(ec.SECP256R1())
    m.cert = make_cert(m.key, cn="dockerd", issuer_key=m.ca_key, issuer_cn="nodeguard test CA")
    m.install(sandbox)
    assert tls_findings(sandbox)[("tls-key-size", "tlskey")].status is Status.PASS


def test_missing_or_garbage_files_fail_without_a_traceback(sandbox: Sandbox) -> None:
    Material().install(sandbox)
    sandbox.path("/etc/docker/tls/cert.pem").unlink()
    sandbox.write("/etc/docker/tls/key.pem", "not a key\n")
    found = tls_findings(sandbox)
    assert found[("tls-cert-expiry", "tlscert")].observed == "missing"
    assert found[("tls-key-size", "tlskey")].status is Status.FAIL
    assert found[("tls-key-match", None)].status is Status.SKIP


def test_no_tls_in_daemon_json_skips(sandbox: Sandbox) -> None:
    sandbox.write("/etc/docker/daemon.json", "{}")
    assert {f.status for f in tls_findings(sandbox).values()} == {Status.SKIP}


# -- the data root on dm-crypt ------------------------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 253:1 / /var/lib/docker rw,relatime shared:5 - ext4 /dev/mapper/vg-docker rw
31 22 0:45 / /srv/btr rw,relatime shared:6 - btrfs /dev/mapper/luks-btr rw
"""


def data_root_finding(sb: Sandbox, mountinfo: str | None = "/fake/mountinfo") -> Finding:
    layout = {"hostLayout": {"mountinfo": mountinfo}} if mountinfo else {}
    policy = parse_policy(json.dumps({"apiVersion": "nodeguard.io/v1alpha1", "kind": "NodeGuardPolicy",
                                       "spec": {"controls": layout}}))
    ctx = Context(HostRoot(sb.root), policy)
    control = HostControl()
    return next(f for f in control.evaluate(control.observe(ctx), policy) if f.rule == "data-root-encrypted")


def dm_device(sb: Sandbox, name: str, devno: str, uuid: str | None, slaves: list[str]) -> None:
    base = sb.path(f"/sys/devices/virtual/block/{name}")
    (base / "slaves").mkdir(parents=True, exist_ok=True)
    if uuid is not None:
        (base / "dm").mkdir(exist_ok=True)
        (base / "dm" / "uuid").write_text(uuid + "\n")
    for s in slaves:
        target = f"../../{s}" if s.startswith("dm-") else f"../../../../pci0000:00/block/sda/{s}"
        os.symlink(target, base / "slaves" / s)
    sb.path("/sys/dev/block").mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../devices/virtual/block/{name}", sb.path(f"/sys/dev/block/{devno}"))
    sb.path("/sys/class/block").mkdir(parents=True, exist_ok=True)
    os.symlink(f"../../devices/virtual/block/{name}", sb.path(f"/sys/class/block/{name}"))
    (base / "dev").write_text(devno + "\n")


def kernel_layout(sb: Sandbox, crypt_uuid: str) -> None:
    sb.write("/fake/mountinfo", MOUNTINFO)
    sb.path("/var/lib/docker").mkdir(parents=True)
    sb.path("/sys/devices/pci0000:00/block/sda/sda2").mkdir(parents=True)
    # LVM on LUKS: the logical volume dm-1 sits on dm-0, the crypt mapping of sda2.
    dm_device(sb, "dm-0", "253:0", crypt_uuid, ["sda2"])
    dm_device(sb, "dm-1", "253:1", "LVM-Jq7dBd3k", ["dm-0"])


def test_lvm_on_luks_is_encrypted(sandbox: Sandbox) -> None:
    kernel_layout(sandbox, "CRYPT-LUKS2-5f1c0de1-data")
    f = data_root_finding(sandbox)
    assert f.status is Status.PASS, f.message
    assert "dm-crypt (dm-0)" in f.message
    assert [layer["name"] for layer in f.observed["layers"]] == ["dm-1", "dm-0"]  # the walk stops at the crypt layer


def test_lvm_without_crypt_is_not(sandbox: Sandbox) -> None:
    kernel_layout(sandbox, "LVM-other")
    f = data_root_finding(sandbox)
    assert f.status is Status.FAIL
    assert "not on an encrypted device" in f.message and "/dev/mapper/vg-docker (dm-1)" in f.message


def test_anonymous_device_is_looked_up_by_its_source(sandbox: Sandbox) -> None:
    kernel_layout(sandbox, "LVM-other")
    dm_device(sandbox, "dm-2", "253:2", "CRYPT-PLAIN-btr", [])
    sandbox.path("/dev/mapper").mkdir(parents=True)
    os.symlink("../dm-2", sandbox.path("/dev/mapper/luks-btr"))
    sandbox.write("/etc/docker/daemon.json", json.dumps({"data-root": "/srv/btr/docker"}))
    sandbox.path("/srv/btr/docker").mkdir(parents=True)
    f = data_root_finding(sandbox)
    assert f.status is Status.PASS, f.message


def test_sandbox_data_root_is_a_plain_folder(sandbox: Sandbox) -> None:
    # No fake table, no sysfs under the sandbox: this process's own mount table and /sys, i.e. the
    # real device under /tmp. util-linux answers the same question independently.
    findmnt, lsblk = require_tool("findmnt"), require_tool("lsblk")
    sandbox.path("/var/lib/docker").mkdir(parents=True)
    source = subprocess.run([findmnt, "-n", "-o", "SOURCE", "-T", str(sandbox.path("/var/lib/docker"))],
                            capture_output=True, text=True, check=True).stdout.strip()
    stack = subprocess.run([lsblk, "-s", "-n", "-o", "TYPE", source], capture_output=True, text=True, check=False)
    encrypted = stack.returncode == 0 and "crypt" in stack.stdout.split()
    f = data_root_finding(sandbox, mountinfo=None)
    assert "the agent's own" in f.details["mountinfo"]
    if encrypted:  # a machine whose /tmp really is on dm-crypt
        assert f.status is Status.PASS, f.message
    else:
        assert f.status is Status.FAIL
        assert "not on an encrypted device" in f.message


def test_missing_data_root_is_a_skip(sandbox: Sandbox) -> None:
    f = data_root_finding(sandbox, mountinfo=None)
    assert f.status is Status.SKIP and "does not exist" in f.message
