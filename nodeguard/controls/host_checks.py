"""host: what the host around the daemon says — its TLS material, sshd, the data root's device.

- The TLS files daemon.json names (tlscacert, tlscert, tlskey): validity (warn before expiry,
  fail once expired), key strength, the key belonging to the certificate, the CA being a CA and
  having issued the certificate.
- sshd, read the way sshd reads it (Include, Match, first value wins): no password logins, keys
  allowed, root login restricted.
- Whether the daemon's data root sits on a dm-crypt device (report only).

Observe-only: nodeguard does not edit sshd_config nor rotate certificates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from nodeguard.controls.base import Context, Control
from nodeguard.formats.mountinfo import MountEntry, mount_of
from nodeguard.formats.sshd_config import SshdConfig
from nodeguard.formats.sshd_config import parse as parse_sshd
from nodeguard.host import HostPathError, HostRoot
from nodeguard.host.blockdev import DeviceStack, device_of_source, device_stack
from nodeguard.policy import HostPolicy, Policy
from nodeguard.structs import Finding, Rule, Severity, Status

if TYPE_CHECKING:
    from cryptography import x509

TLS_KEYS = ("tlscacert", "tlscert", "tlskey")
TLS_READ_LIMIT = 1024 * 1024
DEFAULT_DATA_ROOT = "/var/lib/docker"


@dataclass
class TLSFile:
    key: str  # the daemon.json key that names it
    path: str  # host path
    data: bytes | None = None
    error: str | None = None


@dataclass
class DataRootView:
    path: str
    exists: bool
    mountinfo: str = ""
    compared_path: str = ""
    mount: MountEntry | None = None
    stack: DeviceStack | None = None
    sysfs: str = ""
    error: str | None = None


@dataclass
class HostObservation:
    now: dt.datetime
    config_path: str | None
    tls: dict[str, TLSFile] = field(default_factory=dict)
    sshd_path: str = "/etc/ssh/sshd_config"
    sshd: SshdConfig | None = None
    data_root: DataRootView | None = None


def _reader(host: HostRoot) -> tuple[Any, Any]:
    def read(path: str) -> str | None:
        try:
            return host.read_text(path, limit=TLS_READ_LIMIT)
        except (FileNotFoundError, NotADirectoryError, HostPathError):
            return None
        except OSError:
            return None

    return read, host.listdir


class HostControl(Control):
    name: ClassVar[str] = "host"
    policy_key: ClassVar[str] = "host"
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("tls-cert-expiry", "the daemon's TLS certificates are within their validity", Severity.HIGH),
        Rule("tls-cert-expiring", "no TLS certificate expires within the warning window", Severity.LOW),
        Rule("tls-key-match", "the TLS key belongs to the TLS certificate", Severity.HIGH),
        Rule("tls-key-size", "TLS keys are strong enough (RSA >= 2048, EC >= 256 bits)", Severity.MEDIUM),
        Rule("tls-ca", "tlscacert holds CA certificates (basicConstraints CA:TRUE)", Severity.MEDIUM),
        Rule("tls-cert-issued-by-ca", "the server certificate was issued by tlscacert", Severity.MEDIUM),
        Rule("sshd-password-auth", "sshd refuses password authentication", Severity.HIGH),
        Rule("sshd-pubkey-auth", "sshd allows public key authentication", Severity.LOW),
        Rule("sshd-root-login", "sshd restricts root login (no / prohibit-password)", Severity.HIGH),
        Rule("data-root-encrypted", "the daemon's data root is on an encrypted (dm-crypt) device", Severity.INFO),
    )
    TLS_RULES: ClassVar[tuple[str, ...]] = ("tls-cert-expiry", "tls-cert-expiring", "tls-key-match", "tls-key-size",
                                            "tls-ca", "tls-cert-issued-by-ca")
    SSHD_RULES: ClassVar[tuple[str, ...]] = ("sshd-password-auth", "sshd-pubkey-auth", "sshd-root-login")

    def _settings(self, policy: Policy) -> HostPolicy:
        s = self.settings(policy)
        assert isinstance(s, HostPolicy)
        return s

    def watch_paths(self, ctx: Context) -> list[str]:
        s = self._settings(ctx.policy)
        folders = {s.sshd_config.rsplit("/", 1)[0] or "/"}
        try:
            cfg = ctx.daemon_config.effective
        except Exception:
            cfg = {}
        for key in TLS_KEYS:
            if isinstance(cfg.get(key), str):
                folders.add(ctx.host.from_daemon_path(cfg[key]).rsplit("/", 1)[0] or "/")
        return sorted(folders)

    # -- observe -------------------------------------------------------------------------------

    def observe(self, ctx: Context) -> HostObservation:
        s = self._settings(ctx.policy)
        host = ctx.host
        try:
            cfg_obs = ctx.daemon_config
            cfg: dict[str, Any] = dict(cfg_obs.effective)
            config_path = cfg_obs.path
        except Exception:  # daemon-config reports its own file's problems
            cfg, config_path = {}, None
        obs = HostObservation(now=dt.datetime.now(dt.UTC), config_path=config_path, sshd_path=s.sshd_config)
        for key in TLS_KEYS:
            value = cfg.get(key)
            if not isinstance(value, str) or not value:
                continue
            f = TLSFile(key, host.from_daemon_path(value))
            try:
                f.data = host.read_bytes(f.path, limit=TLS_READ_LIMIT)
            except FileNotFoundError:
                f.error = "missing"
            except OSError as exc:
                f.error = f"cannot read: {exc.strerror or exc}"
            obs.tls[key] = f
        if host.stat(s.sshd_config) is not None:
            read, list_dir = _reader(host)
            obs.sshd = parse_sshd(read, list_dir, s.sshd_config)
        obs.data_root = self._observe_data_root(ctx, cfg)
        return obs

    def _observe_data_root(self, ctx: Context, cfg: dict[str, Any]) -> DataRootView:
        host = ctx.host
        path = host.from_daemon_path(str(cfg.get("data-root") or cfg.get("graph") or DEFAULT_DATA_ROOT))
        view = DataRootView(path, host.stat(path) is not None)
        if not view.exists:
            return view
        try:
            real = host.resolve(path)
            table = ctx.mounts
        except OSError as exc:  # HostPathError and NoMountTable included
            view.error = f"no mount table for {path}: {exc.strerror or exc}"
            return view
        view.mountinfo = table.label
        # The host's init names host paths; the agent's own table names real paths (a sandbox, or a
        # pod without the host's /proc).
        view.compared_path = host.host_path_of(real) if table.host_named else str(real)
        view.mount = mount_of(table.entries, view.compared_path)
        if view.mount is None:
            return view
        # Block devices are not namespaced: without the host's /sys under the root (a pod that does
        # not mount it, a test sandbox), the agent's own /sys shows the same devices.
        sys_host = host if host.lstat("/sys/dev/block") is not None else HostRoot("/")
        view.sysfs = "/sys (host root)" if sys_host is host else "/sys (the agent's own)"
        device = view.mount.device
        if device.startswith("0:"):
            # btrfs, zfs, overlay...: an anonymous device; the source may still name the block device.
            device = device_of_source(host, sys_host, view.mount.source) or device
        view.stack = device_stack(sys_host, device)
        return view

    # -- evaluate ------------------------------------------------------------------------------

    def evaluate(self, observed: HostObservation, policy: Policy) -> list[Finding]:
        s = self._settings(policy)
        return self._tls(observed, s) + self._sshd(observed, s) + self._data_root(observed)

    def _tls(self, obs: HostObservation, s: HostPolicy) -> list[Finding]:
        if not obs.tls:
            return self.skip_all("daemon.json names no TLS material (tlscacert, tlscert, tlskey)",
                                 self.TLS_RULES, path=obs.config_path)
        # cryptography costs the agent ~9 MiB of RSS: loaded only on hosts whose daemon uses TLS.
        from nodeguard import tls_material as tm

        out: list[Finding] = []
        certs: dict[str, list[x509.Certificate]] = {}
        key: Any = None
        for name, f in obs.tls.items():
            if f.data is None:
                for rule in ("tls-cert-expiry", "tls-key-size"):
                    out.append(self.finding(rule, Status.FAIL, f"{name} {f.path}: {f.error}", observed=f.error,
                                            expected="a readable file", path=f.path, subject=name))
                continue
            try:
                if name == "tlskey":
                    key = tm.load_private_key(f.data)
                else:
                    certs[name] = tm.load_certificates(f.data)
            except tm.TLSFileError as exc:
                rule = "tls-key-size" if name == "tlskey" else "tls-cert-expiry"
                out.append(self.finding(rule, Status.FAIL, f"{name} {f.path}: {exc}", observed=str(exc),
                                        expected="PEM " + ("private key" if name == "tlskey" else "certificate"),
                                        path=f.path, subject=name))

        for name, chain in certs.items():
            path = obs.tls[name].path
            out += self._validity(name, path, chain, obs.now, s)
            weak = [(c.subject.rfc4514_string(), tm.key_strength(c.public_key(), s.min_rsa_bits, s.min_ec_bits))
                    for c in chain]
            bad = [f"{subj}: {k.why}" for subj, k in weak if not k.ok]
            out.append(self.finding(
                "tls-key-size", Status.FAIL if bad else Status.PASS,
                f"{name} {path}: " + ("; ".join(bad) if bad else ", ".join(k.why for _, k in weak)),
                observed=[k.why for _, k in weak], expected=f"RSA >= {s.min_rsa_bits}, EC >= {s.min_ec_bits}",
                path=path, subject=name))
        if key is not None:
            strength = tm.key_strength(key, s.min_rsa_bits, s.min_ec_bits)
            path = obs.tls["tlskey"].path
            out.append(self.finding("tls-key-size", Status.PASS if strength.ok else Status.FAIL,
                                    f"tlskey {path}: {strength.why}", observed=strength.why,
                                    expected=f"RSA >= {s.min_rsa_bits}, EC >= {s.min_ec_bits}",
                                    path=path, subject="tlskey"))

        leaf = certs.get("tlscert", [None])[0]
        if leaf is not None and key is not None:
            ok = tm.key_matches(leaf, key)
            out.append(self.finding(
                "tls-key-match", Status.PASS if ok else Status.FAIL,
                "the key belongs to the certificate" if ok else
                f"{obs.tls['tlskey'].path} is not the key of {obs.tls['tlscert'].path}: dockerd cannot serve TLS",
                observed=ok, expected=True, path=obs.tls["tlskey"].path))
        else:
            out.append(self.finding("tls-key-match", Status.SKIP, "needs both a readable tlscert and tlskey"))

        cas = certs.get("tlscacert")
        if cas is not None:
            not_ca = [c.subject.rfc4514_string() for c in cas if not tm.is_ca(c)]
            path = obs.tls["tlscacert"].path
            out.append(self.finding(
                "tls-ca", Status.FAIL if not_ca else Status.PASS,
                f"{path}: {not_ca} lack basicConstraints CA:TRUE: not a CA" if not_ca else
                f"{path}: {len(cas)} CA certificate(s)",
                observed=not_ca or [c.subject.rfc4514_string() for c in cas], expected="CA:TRUE", path=path))
            if leaf is not None:
                issuer = tm.issued_by(leaf, [c for c in cas if tm.is_ca(c)])
                out.append(self.finding(
                    "tls-cert-issued-by-ca", Status.PASS if issuer is not None else Status.FAIL,
                    f"the server certificate was issued by {issuer.subject.rfc4514_string()}" if issuer is not None
                    else f"no CA in {path} issued {obs.tls['tlscert'].path}: clients verifying with it will fail",
                    observed=leaf.issuer.rfc4514_string(), expected=[c.subject.rfc4514_string() for c in cas],
                    path=obs.tls["tlscert"].path))
            else:
                out.append(self.finding("tls-cert-issued-by-ca", Status.SKIP, "no readable tlscert"))
        else:
            out.append(self.finding("tls-ca", Status.SKIP, "daemon.json names no readable tlscacert"))
            out.append(self.finding("tls-cert-issued-by-ca", Status.SKIP, "daemon.json names no readable tlscacert"))
        return out

    def _validity(self, name: str, path: str, chain: list[x509.Certificate], now: dt.datetime,
                  s: HostPolicy) -> list[Finding]:
        from nodeguard import tls_material as tm

        periods = [tm.validity(c) for c in chain]
        first = min(periods, key=lambda v: v.not_after)
        seen = {"not_before": first.not_before.isoformat(), "not_after": first.not_after.isoformat(),
                "subject": first.subject}
        details = {"days_left": round(first.days_left(now), 1)}
        early = [v for v in periods if v.not_before > now]
        if first.not_after <= now:
            return [
                self.finding("tls-cert-expiry", Status.FAIL,
                             f"{name} {path}: {first.subject} expired on {first.not_after:%Y-%m-%d}",
                             observed=seen, expected="valid now", path=path, subject=name, details=details),
                self.finding("tls-cert-expiring", Status.SKIP, f"{name} already expired (see tls-cert-expiry)",
                             path=path, subject=name),
            ]
        out = [self.finding(
            "tls-cert-expiry", Status.FAIL if early else Status.PASS,
            f"{name} {path}: {early[0].subject} is not valid before {early[0].not_before:%Y-%m-%d}" if early else
            f"{name} {path}: valid until {first.not_after:%Y-%m-%d}",
            observed=seen, expected="valid now", path=path, subject=name, details=details)]
        left = first.days_left(now)
        soon = left < s.cert_expiry_warn_days
        out.append(self.finding(
            "tls-cert-expiring", Status.FAIL if soon else Status.PASS,
            f"{name} {path}: {first.subject} expires in {left:.0f} day(s), on {first.not_after:%Y-%m-%d}"
            + (f" (warning at {s.cert_expiry_warn_days} days)" if soon else ""),
            observed=seen, expected=f"more than {s.cert_expiry_warn_days} days left", path=path, subject=name,
            details=details))
        return out

    def _sshd(self, obs: HostObservation, s: HostPolicy) -> list[Finding]:
        if obs.sshd is None:
            return self.skip_all(f"no {obs.sshd_path}: sshd is not installed here", self.SSHD_RULES,
                                 path=obs.sshd_path)
        cfg = obs.sshd
        out = []
        for rule, keyword, allowed in (
            ("sshd-password-auth", "PasswordAuthentication", ["no"]),
            ("sshd-pubkey-auth", "PubkeyAuthentication", ["yes"]),
            ("sshd-root-login", "PermitRootLogin", s.permit_root_login),
        ):
            setting = cfg.global_setting(keyword)
            value = cfg.effective(keyword)
            ok = value.lower() in [a.lower() for a in allowed]
            where = f"{setting.file}:{setting.line}" if setting else "sshd's default"
            overrides = [{"match": o.match, "value": o.value, "where": f"{o.file}:{o.line}"}
                         for o in cfg.match_overrides(keyword)]
            weaker = [o for o in overrides if str(o["value"]).lower() not in [a.lower() for a in allowed]]
            message = f"{keyword} {value} ({where})"
            if weaker:
                message += "; but " + ", ".join(f"Match {o['match']} sets {o['value']} ({o['where']})" for o in weaker)
            out.append(self.finding(
                rule, Status.PASS if ok else Status.FAIL, message, observed=value, expected=allowed,
                path=setting.file if setting else obs.sshd_path,
                details={"source": where, "match_overrides": overrides, "files": cfg.files,
                         **({"problems": cfg.problems} if cfg.problems else {})}))
        return out

    def _data_root(self, obs: HostObservation) -> list[Finding]:
        rule = "data-root-encrypted"
        v = obs.data_root
        if v is None or not v.exists:
            path = v.path if v else DEFAULT_DATA_ROOT
            return [self.finding(rule, Status.SKIP, f"{path} does not exist (no daemon data here)", path=path)]
        if v.error is not None:
            return [self.finding(rule, Status.SKIP, v.error, path=v.path)]
        if v.mount is None:
            return [self.finding(rule, Status.SKIP, f"{v.compared_path} is on no mount of {v.mountinfo}",
                                 path=v.path)]
        stack = v.stack
        seen = {"mount_point": v.mount.mount_point, "device": v.mount.device, "fstype": v.mount.fstype,
                "source": v.mount.source,
                "layers": [{"name": n, "dm_uuid": u} for n, u in stack.layers] if stack else []}
        details = {"mountinfo": v.mountinfo, "sysfs": v.sysfs}
        if stack is not None and stack.encrypted:
            crypt = next(n for n, u in stack.layers if u.startswith("CRYPT-"))
            return [self.finding(rule, Status.PASS,
                                 f"{v.path} is on {v.mount.source} ({v.mount.fstype}), encrypted by dm-crypt ({crypt})",
                                 observed=seen, expected="a dm-crypt device", path=v.path, details=details)]
        what = (f"{v.mount.source}, a {v.mount.fstype} filesystem" if stack is None or stack.name is None
                else f"{v.mount.source} ({stack.name})")
        return [self.finding(rule, Status.FAIL,
                             f"{v.path} is not on an encrypted device: it lives on {what} mounted at "
                             f"{v.mount.mount_point}",
                             observed=seen, expected="a dm-crypt device", path=v.path, details=details)]
