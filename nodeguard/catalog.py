"""The rule catalog: every rule nodeguard knows, as data. No I/O, no import above `structs`.

One row per rule: the control it belongs to (its name in findings and its key under
spec.controls), the rule id, its title, severity, CIS Docker Benchmark id, whether enforce mode
can put it back, and the remediation text a person follows. The CIS recommendations of sections
1-3 (with 5.x ids for the runtime checks) are listed too, with why nodeguard does not check or
enforce one.

Who reads it: the policy (to validate rule ids without importing a control), `nodeguard cis
list`, the `check` output (remediation text, SARIF rules, JUnit cases) and the events (OCSF
remediation, OTel security_rule.*). The controls keep their own `Rule` objects (a control is
easier to read with its rules beside it); a test holds the two to the same ids, titles,
severities, CIS ids and enforceability.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from nodeguard.structs import Severity

BENCHMARK = "CIS Docker Benchmark v1.6.0"
BENCHMARK_NAME = "CIS Docker Benchmark"
BENCHMARK_VERSION = "1.6.0"


@dataclass(frozen=True)
class RuleEntry:
    control: str  # in findings and events: "daemon-config"
    policy_key: str  # under spec.controls: "daemonConfig"
    id: str
    title: str
    severity: Severity
    cis: str | None
    enforceable: bool
    remediation: str

    @property
    def key(self) -> str:
        return f"{self.control}/{self.id}"


@dataclass(frozen=True)
class CisItem:
    id: str
    title: str
    # Why nodeguard has no rule for it (shown only when no rule carries this id).
    why_not: str | None = None
    # Why no rule for it is enforceable (shown when checked but not enforced).
    why_report_only: str | None = None


_AUDIT_ONLY = "audit rules load on the host (`augenrules --load`; refused once immutable)"
_RESTART = "needs a daemon restart and can stop every container: reported"

CATALOG: tuple[CisItem, ...] = (
    CisItem("1.1.1", "Ensure a separate partition for containers has been created",
            why_report_only="repartitioning is the operator's job"),
    CisItem("1.1.2", "Ensure only trusted users are allowed to control Docker daemon"),
    CisItem("1.1.3", "Ensure auditing is configured for the Docker daemon", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.4", "Ensure auditing is configured for Docker files and directories - /run/containerd",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.5", "Ensure auditing is configured for Docker files and directories - /var/lib/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.6", "Ensure auditing is configured for Docker files and directories - /etc/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.7", "Ensure auditing is configured for Docker files and directories - docker.service",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.8", "Ensure auditing is configured for Docker files and directories - containerd.sock",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.9", "Ensure auditing is configured for Docker files and directories - docker.socket",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.10", "Ensure auditing is configured for Docker files and directories - /etc/default/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.11", "Ensure auditing is configured for Docker files and directories - /etc/docker/daemon.json",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.12", "Ensure auditing is configured for Docker files and directories - "
            "/etc/containerd/config.toml", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.13", "Ensure auditing is configured for Docker files and directories - /etc/sysconfig/docker",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.14", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.15", "Ensure auditing is configured for Docker files and directories - /usr/bin/containerd-shim",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.1.16", "Ensure auditing is configured for Docker files and directories - "
            "/usr/bin/containerd-shim-runc-v1", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.17", "Ensure auditing is configured for Docker files and directories - "
            "/usr/bin/containerd-shim-runc-v2", why_report_only=_AUDIT_ONLY),
    CisItem("1.1.18", "Ensure auditing is configured for Docker files and directories - /usr/bin/runc",
            why_report_only=_AUDIT_ONLY),
    CisItem("1.2.1", "Ensure the container host has been Hardened",
            why_not="manual: hardening the OS is its own benchmark (CIS for the distribution)"),
    CisItem("1.2.2", "Ensure that the version of Docker is up to date",
            why_not="the engine version is read through the Docker API by the runtime control",
            why_report_only="upgrading the engine is a package operation: reported"),
    CisItem("2.1", "Run the Docker daemon as a non-root user, if possible",
            why_not="rootless mode is read from `docker info` by the runtime control",
            why_report_only="a rootless daemon is a different installation: reported (opt-in rule)"),
    CisItem("2.2", "Ensure network traffic is restricted between containers on the default bridge"),
    CisItem("2.3", "Ensure the logging level is set to 'info'"),
    CisItem("2.4", "Ensure Docker is allowed to make changes to iptables"),
    CisItem("2.5", "Ensure insecure registries are not used"),
    CisItem("2.6", "Ensure aufs storage driver is not used",
            why_report_only="changing the storage driver hides every image and container: reported"),
    CisItem("2.7", "Ensure TLS authentication for Docker daemon is configured"),
    CisItem("2.8", "Ensure the default ulimit is configured appropriately",
            why_report_only="the right limits depend on the workloads: reported"),
    CisItem("2.9", "Enable user namespace support",
            why_report_only="enabling it hides every existing image and container: reported"),
    CisItem("2.10", "Ensure the default cgroup usage has been confirmed", why_report_only=_RESTART),
    CisItem("2.11", "Ensure base device size is not changed until needed", why_report_only=_RESTART),
    CisItem("2.12", "Ensure that authorization for Docker client commands is enabled",
            why_report_only="a plugin must be installed and configured first; naming a missing one makes "
            "dockerd exit: reported"),
    CisItem("2.13", "Ensure centralized and remote logging is configured",
            why_report_only="the log destination is site-specific: reported"),
    CisItem("2.14", "Ensure containers are restricted from acquiring new privileges"),
    CisItem("2.15", "Ensure live restore is enabled"),
    CisItem("2.16", "Ensure Userland Proxy is Disabled"),
    CisItem("2.17", "Ensure that a daemon-wide custom seccomp profile is applied if appropriate",
            why_report_only=_RESTART),
    CisItem("2.18", "Ensure that experimental features are not implemented in production"),
    CisItem("3.1", "Ensure that the docker.service file ownership is set to root:root"),
    CisItem("3.2", "Ensure that docker.service file permissions are appropriately set"),
    CisItem("3.3", "Ensure that docker.socket file ownership is set to root:root"),
    CisItem("3.4", "Ensure that docker.socket file permissions are set to 644 or more restrictive"),
    CisItem("3.5", "Ensure that the /etc/docker directory ownership is set to root:root"),
    CisItem("3.6", "Ensure that /etc/docker directory permissions are set to 755 or more restrictively"),
    CisItem("3.7", "Ensure that registry certificate file ownership is set to root:root"),
    CisItem("3.8", "Ensure that registry certificate file permissions are set to 444 or more restrictively"),
    CisItem("3.9", "Ensure that TLS CA certificate file ownership is set to root:root"),
    CisItem("3.10", "Ensure that TLS CA certificate file permissions are set to 444 or more restrictively"),
    CisItem("3.11", "Ensure that Docker server certificate file ownership is set to root:root"),
    CisItem("3.12", "Ensure that the Docker server certificate file permissions are set to 444 or more "
            "restrictively"),
    CisItem("3.13", "Ensure that the Docker server certificate key file ownership is set to root:root"),
    CisItem("3.14", "Ensure that the Docker server certificate key file permissions are set to 400"),
    CisItem("3.15", "Ensure that the Docker socket file ownership is set to root:docker"),
    CisItem("3.16", "Ensure that the Docker socket file permissions are set to 660 or more restrictively"),
    CisItem("3.17", "Ensure that the daemon.json file ownership is set to root:root"),
    CisItem("3.18", "Ensure that daemon.json file permissions are set to 644 or more restrictive"),
    CisItem("3.19", "Ensure that the /etc/default/docker file ownership is set to root:root"),
    CisItem("3.20", "Ensure that the /etc/sysconfig/docker file permissions are set to 644 or more restrictively"),
    CisItem("3.21", "Ensure that the /etc/sysconfig/docker file ownership is set to root:root"),
    CisItem("3.22", "Ensure that the /etc/default/docker file permissions are set to 644 or more restrictively"),
    CisItem("3.23", "Ensure that the Containerd socket file ownership is set to root:root"),
    CisItem("3.24", "Ensure that the Containerd socket file permissions are set to 660 or more restrictively"),
)

_AUDIT_REMEDIATION = ("Add a watch for {} to the audit rules (/etc/audit/rules.d/docker.rules, "
                      "`-w PATH -k docker`) and load them: augenrules --load.")
_OWNER_REMEDIATION = "chown {owner} {what} (the policy's owner, root:root by default)."
_MODE_REMEDIATION = "chmod {mode} {what} (or stricter: the policy's mode)."
_RESTART = " Restart dockerd for it to take effect."
_S = Severity

RULES: tuple[RuleEntry, ...] = (
    RuleEntry("daemon-config", "daemonConfig", "valid-json", "daemon.json is a valid JSON object",
              _S.HIGH, None, True,
              "Fix /etc/docker/daemon.json so it is one JSON object (check with `python3 -m json.tool "
              "/etc/docker/daemon.json`); in enforce mode nodeguard restores the last valid file."),
    RuleEntry("daemon-config", "daemonConfig", "tcp-host-tls", "a TCP listener requires tlsverify",
              _S.CRITICAL, "2.7", True,
              "Give every tcp:// entry of `hosts` TLS with client verification: set \"tlsverify\": true with tlscacert,"
              " tlscert and tlskey in daemon.json, or remove the TCP listener. Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "plaintext-2375", "no listener on the plaintext port 2375",
              _S.CRITICAL, "2.7", True,
              "Remove any listener on port 2375 from `hosts` (daemon.json and the unit's -H flags); serve the API "
              "over TLS on 2376. Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "tls-verify", "tls is never on without tlsverify",
              _S.HIGH, "2.7", False,
              "Set \"tlsverify\": true wherever \"tls\": true is set, so clients must present a certificate signed by "
              "tlscacert. Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "icc", "inter-container traffic off on the default bridge",
              _S.MEDIUM, "2.2", True,
              "Set \"icc\": false in daemon.json; let containers talk over user-defined networks instead. Restart "
              "dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "log-level", "log level is the policy's",
              _S.LOW, "2.3", True,
              "Set \"log-level\": \"info\" (or the policy's level) in daemon.json, or remove the --log-level flag."),
    RuleEntry("daemon-config", "daemonConfig", "iptables", "Docker may manage iptables",
              _S.MEDIUM, "2.4", True,
              "Remove \"iptables\": false from daemon.json (and --iptables=false from the unit) so Docker keeps its "
              "firewall rules. Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "insecure-registries", "no insecure registries beyond the allowed",
              _S.HIGH, "2.5", True,
              "Remove the registry from \"insecure-registries\" in daemon.json (write an empty list, then send SIGHUP);"
              " give the registry a TLS certificate."),
    RuleEntry("daemon-config", "daemonConfig", "storage-driver", "aufs storage driver is not used",
              _S.MEDIUM, "2.6", False,
              "Move to the overlay2 storage driver: set \"storage-driver\": \"overlay2\" after saving images "
              "and volumes "
              "(existing containers are hidden by the change)."),
    RuleEntry("daemon-config", "daemonConfig", "userns-remap", "user namespace remapping is enabled",
              _S.MEDIUM, "2.9", False,
              "Set \"userns-remap\": \"default\" in daemon.json, after planning for the images and containers"
              " it hides. "
              "Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "no-new-privileges", "containers cannot gain new privileges",
              _S.MEDIUM, "2.14", True,
              "Set \"no-new-privileges\": true in daemon.json. Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "live-restore", "live restore is enabled",
              _S.LOW, "2.15", True,
              "Set \"live-restore\": true in daemon.json, then send SIGHUP to dockerd."),
    RuleEntry("daemon-config", "daemonConfig", "userland-proxy", "userland proxy is disabled",
              _S.LOW, "2.16", True,
              "Set \"userland-proxy\": false in daemon.json. Restart dockerd for it to take effect."),
    RuleEntry("daemon-config", "daemonConfig", "experimental", "experimental features are off",
              _S.LOW, "2.18", True,
              "Set \"experimental\": false in daemon.json (or remove the key and the --experimental flag)."),
    RuleEntry("daemon-config", "daemonConfig", "log-rotation", "local container logs are rotated",
              _S.LOW, None, True,
              "With a local log driver (json-file, local), set \"log-opts\": {\"max-size\": \"10m\", "
              "\"max-file\": \"3\"} in "
              "daemon.json."),
    RuleEntry("daemon-config", "daemonConfig", "default-ulimits", "containers get default ulimits",
              _S.LOW, "2.8", False,
              "Set \"default-ulimits\" in daemon.json (for example nofile and nproc) to limits the workloads need."),
    RuleEntry("daemon-config", "daemonConfig", "cgroup-parent",
              "containers use the default (or a confirmed) cgroup parent",
              _S.LOW, "2.10", False,
              "Remove \"cgroup-parent\" from daemon.json, or confirm the cgroup it names in the policy."),
    RuleEntry("daemon-config", "daemonConfig", "base-device-size",
              "the base device size (dm.basesize) is not changed",
              _S.LOW, "2.11", False,
              "Remove dm.basesize from \"storage-opts\" unless a workload needs it."),
    RuleEntry("daemon-config", "daemonConfig", "authorization-plugin",
              "an authorization plugin checks every API request",
              _S.MEDIUM, "2.12", False,
              "Install an authorization plugin, then list it in \"authorization-plugins\" in daemon.json."),
    RuleEntry("daemon-config", "daemonConfig", "remote-logging",
              "container logs go to a central or remote log driver",
              _S.LOW, "2.13", False,
              "Set \"log-driver\" to a central driver (syslog, journald, fluentd, gelf, ...) and its \"log-opts\" in "
              "daemon.json."),
    RuleEntry("daemon-config", "daemonConfig", "seccomp-profile",
              "the daemon-wide seccomp profile filters system calls",
              _S.HIGH, "2.17", False,
              "Leave \"seccomp-profile\" unset (Docker's default profile) or point it at a profile that filters system "
              "calls; never \"unconfined\". Restart dockerd for it to take effect."),
    RuleEntry("daemon-files", "daemonFiles", "docker-service-owner", "docker.service unit owned as the policy says",
              _S.MEDIUM, "3.1", True,
              _OWNER_REMEDIATION.format(
                  owner="root:root",
                  what="the docker.service unit file (systemctl show -p FragmentPath docker.service)")),
    RuleEntry("daemon-files", "daemonFiles", "docker-service-mode",
              "docker.service unit no more permissive than the policy",
              _S.MEDIUM, "3.2", True,
              _MODE_REMEDIATION.format(
                  mode="644",
                  what="the docker.service unit file (systemctl show -p FragmentPath docker.service)")),
    RuleEntry("daemon-files", "daemonFiles", "docker-socket-unit-owner",
              "docker.socket unit owned as the policy says",
              _S.MEDIUM, "3.3", True,
              _OWNER_REMEDIATION.format(
                  owner="root:root",
                  what="the docker.socket unit file (systemctl show -p FragmentPath docker.socket)")),
    RuleEntry("daemon-files", "daemonFiles", "docker-socket-unit-mode",
              "docker.socket unit no more permissive than the policy",
              _S.MEDIUM, "3.4", True,
              _MODE_REMEDIATION.format(
                  mode="644",
                  what="the docker.socket unit file (systemctl show -p FragmentPath docker.socket)")),
    RuleEntry("daemon-files", "daemonFiles", "etc-docker-owner", "/etc/docker owned as the policy says",
              _S.MEDIUM, "3.5", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="/etc/docker")),
    RuleEntry("daemon-files", "daemonFiles", "etc-docker-mode", "/etc/docker no more permissive than the policy",
              _S.MEDIUM, "3.6", True,
              _MODE_REMEDIATION.format(mode="755", what="/etc/docker")),
    RuleEntry("daemon-files", "daemonFiles", "tls-ca-owner", "TLS CA certificate owned as the policy says",
              _S.MEDIUM, "3.9", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="the file daemon.json's tlscacert names")),
    RuleEntry("daemon-files", "daemonFiles", "tls-ca-mode", "TLS CA certificate no more permissive than the policy",
              _S.MEDIUM, "3.10", True,
              _MODE_REMEDIATION.format(mode="444", what="the file daemon.json's tlscacert names")),
    RuleEntry("daemon-files", "daemonFiles", "tls-cert-owner", "TLS server certificate owned as the policy says",
              _S.MEDIUM, "3.11", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="the file daemon.json's tlscert names")),
    RuleEntry("daemon-files", "daemonFiles", "tls-cert-mode",
              "TLS server certificate no more permissive than the policy",
              _S.MEDIUM, "3.12", True,
              _MODE_REMEDIATION.format(mode="444", what="the file daemon.json's tlscert names")),
    RuleEntry("daemon-files", "daemonFiles", "tls-key-owner", "TLS server key owned as the policy says",
              _S.MEDIUM, "3.13", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="the file daemon.json's tlskey names")),
    RuleEntry("daemon-files", "daemonFiles", "tls-key-mode", "TLS server key no more permissive than the policy",
              _S.MEDIUM, "3.14", True,
              _MODE_REMEDIATION.format(mode="400", what="the file daemon.json's tlskey names")),
    RuleEntry("daemon-files", "daemonFiles", "daemon-json-owner", "daemon.json owned as the policy says",
              _S.MEDIUM, "3.17", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="/etc/docker/daemon.json")),
    RuleEntry("daemon-files", "daemonFiles", "daemon-json-mode", "daemon.json no more permissive than the policy",
              _S.MEDIUM, "3.18", True,
              _MODE_REMEDIATION.format(mode="644", what="/etc/docker/daemon.json")),
    RuleEntry("daemon-files", "daemonFiles", "registry-cert-owner",
              "registry certificates and keys under certs.d owned as the policy says",
              _S.MEDIUM, "3.7", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="-R /etc/docker/certs.d")),
    RuleEntry("daemon-files", "daemonFiles", "registry-cert-mode",
              "registry certificates and keys under certs.d no more permissive than the policy",
              _S.MEDIUM, "3.8", True,
              _MODE_REMEDIATION.format(mode="444 (keys: 400)", what="the files under /etc/docker/certs.d")),
    RuleEntry("daemon-files", "daemonFiles", "etc-default-docker-owner",
              "/etc/default/docker owned as the policy says",
              _S.MEDIUM, "3.19", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="/etc/default/docker")),
    RuleEntry("daemon-files", "daemonFiles", "etc-default-docker-mode",
              "/etc/default/docker no more permissive than the policy",
              _S.MEDIUM, "3.22", True,
              _MODE_REMEDIATION.format(mode="644", what="/etc/default/docker")),
    RuleEntry("daemon-files", "daemonFiles", "etc-sysconfig-docker-owner",
              "/etc/sysconfig/docker owned as the policy says",
              _S.MEDIUM, "3.21", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="/etc/sysconfig/docker")),
    RuleEntry("daemon-files", "daemonFiles", "etc-sysconfig-docker-mode",
              "/etc/sysconfig/docker no more permissive than the policy",
              _S.MEDIUM, "3.20", True,
              _MODE_REMEDIATION.format(mode="644", what="/etc/sysconfig/docker")),
    RuleEntry("daemon-files", "daemonFiles", "containerd-sock-owner", "containerd's socket owned as the policy says",
              _S.MEDIUM, "3.23", True,
              _OWNER_REMEDIATION.format(owner="root:root", what="/run/containerd/containerd.sock")),
    RuleEntry("daemon-files", "daemonFiles", "containerd-sock-mode",
              "containerd's socket no more permissive than the policy",
              _S.MEDIUM, "3.24", True,
              _MODE_REMEDIATION.format(mode="660", what="/run/containerd/containerd.sock")),
    RuleEntry("daemon-files", "daemonFiles", "containerd-sock-acl",
              "no ACL entry grants anyone else containerd's socket",
              _S.HIGH, "3.24", True,
              "Remove the extra ACL entries: setfacl -b /run/containerd/containerd.sock."),
    RuleEntry("daemon-files", "daemonFiles", "extra-owner", "a file the policy lists owned as the policy says",
              _S.MEDIUM, None, True,
              "chown the file to the owner and group the policy lists for it (spec.controls.daemonFiles.extra)."),
    RuleEntry("daemon-files", "daemonFiles", "extra-mode",
              "a file the policy lists no more permissive than the policy",
              _S.MEDIUM, None, True,
              "chmod the file to the mode the policy lists for it (spec.controls.daemonFiles.extra), or stricter."),
    RuleEntry("socket", "socket", "socket-owner", "docker.sock owned by root:docker",
              _S.HIGH, "3.15", True,
              "chown root:docker /var/run/docker.sock (the unit's SocketUser/SocketGroup, or the daemon's `group` "
              "key, decide it at each start)."),
    RuleEntry("socket", "socket", "socket-mode", "docker.sock no more permissive than 0660",
              _S.CRITICAL, "3.16", True,
              "chmod 660 /var/run/docker.sock and set SocketMode=0660 in docker.socket so a restart keeps it."),
    RuleEntry("socket", "socket", "socket-acl", "no ACL entry grants anyone else access to docker.sock",
              _S.CRITICAL, "3.16", True,
              "Remove the extra ACL entries: setfacl -b /var/run/docker.sock."),
    RuleEntry("docker-group", "dockerGroup", "member-allowed", "only allowed users are members of the docker group",
              _S.HIGH, "1.1.2", True,
              "Remove the user from the docker group (gpasswd -d USER docker) or add them to the policy's allow-list;"
              " membership is root on the host."),
    RuleEntry("docker-group", "dockerGroup", "primary-group", "no user has the docker group as primary group",
              _S.HIGH, "1.1.2", False,
              "Give the user another primary group (usermod -g GROUP USER); the docker group as primary group is root"
              " on the host."),
    RuleEntry("docker-group", "dockerGroup", "single-entry", "one docker group line, and no other group with its gid",
              _S.HIGH, "1.1.2", False,
              "Keep one line for the docker group in /etc/group and give no other group its gid; remove commented or"
              " blank-led copies too (glibc's initgroups still reads them)."),
    RuleEntry("docker-group", "dockerGroup", "group-password", "the docker group has no password (newgrp docker)",
              _S.HIGH, "1.1.2", True,
              "Lock the group's password (gpasswd -r docker, or '!' in /etc/gshadow): whoever knows it can newgrp"
              " docker."),
    RuleEntry("firewall", "firewall", "backend-available", "a netfilter backend can hold nodeguard's rules",
              _S.HIGH, None, False,
              "Install an iptables or nftables backend the agent can use (the nf_tables kernel module, or the legacy "
              "xtables modules)."),
    RuleEntry("firewall", "firewall", "backend-unchanged",
              "the host's netfilter still points to the backend chosen at start", _S.HIGH, None, False,
              "Find what moved the host's netfilter to another backend (a package upgrade, iptables-legacy vs "
              "iptables-nft alternatives, a tool that flushed nf_tables) and restart nodeguard once the host is "
              "settled: it keeps its rules in the backend it chose at start."),
    RuleEntry("firewall", "firewall", "table-owner",
              "no other process owns nodeguard's nf_tables table (flags owner)", _S.CRITICAL, None, True,
              "Stop the process named in the finding (it holds nodeguard's table with nf_tables 'flags owner', so "
              "nobody can restore the port's rules); nodeguard restores the table the moment it exits."),
    RuleEntry("firewall", "firewall", "jump-present", "nodeguard's chain is hooked first on the input path",
              _S.CRITICAL, None, True,
              "Let nodeguard restore its jump (enforce mode), or insert it first in INPUT: iptables -I INPUT 1 -j "
              "NODEGUARD-INPUT (and ip6tables)."),
    RuleEntry("firewall", "firewall", "chain-intact", "nodeguard's chain holds exactly the policy's rules",
              _S.HIGH, None, True,
              "Let nodeguard restore its chain (enforce mode); it holds exactly the policy's allowed networks."),
    RuleEntry("firewall", "firewall", "port-restricted", "a daemon port is reachable only from allowed networks",
              _S.CRITICAL, "2.7", True,
              "Allow the daemon's TCP port only from the policy's networks (spec.controls.firewall.allowedCidrs) and "
              "enforce the firewall control."),
    RuleEntry("firewall", "firewall", "plaintext-blocked", "the plaintext Docker port 2375 is closed to everyone",
              _S.CRITICAL, "2.7", True,
              "Close TCP port 2375 to everyone (the firewall control in enforce mode drops it), and remove the "
              "listener."),
    RuleEntry("listeners", "listeners", "plaintext-listener",
              "dockerd has no plaintext TCP listener (and nothing listens on 2375)",
              _S.CRITICAL, "2.7", False,
              "Remove the plaintext TCP listener from dockerd (`hosts` in daemon.json or -H in the unit) and restart "
              "dockerd; TLS on 2376 instead."),
    RuleEntry("listeners", "listeners", "wildcard-listener",
              "dockerd's TCP listeners are bound to chosen addresses, not 0.0.0.0 or ::",
              _S.MEDIUM, None, False,
              "Bind dockerd's TCP listener to a chosen address (tcp://10.0.0.5:2376), not 0.0.0.0 or ::."),
    RuleEntry("listeners", "listeners", "listener-firewalled",
              "every TCP port dockerd listens on has nodeguard's firewall rules",
              _S.HIGH, "2.7", False,
              "Enforce the firewall control for every port dockerd listens on, or remove the listener."),
    RuleEntry("runtime", "runtime", "daemon-unresponsive", "the daemon answers its API within the policy's timeout",
              _S.HIGH, None, False,
              "Find why dockerd accepts connections on its socket but does not answer (a hung daemon, a stuck "
              "storage driver, a full disk): its containers and settings cannot be checked until it answers."),
    RuleEntry("runtime", "runtime", "engine-version", "the Docker engine is at least the policy's minimum",
              _S.HIGH, "1.2.2", False,
              "Upgrade the Docker engine package to the policy's minimum version or later."),
    RuleEntry("runtime", "runtime", "rootless", "the daemon runs rootless",
              _S.INFO, "2.1", False,
              "Run the daemon rootless (dockerd-rootless-setuptool.sh install) where the workloads allow it."),
    RuleEntry("runtime", "runtime", "userns-remap-active", "user namespace remapping is active in the running daemon",
              _S.MEDIUM, "2.9", False,
              "Restart dockerd after setting \"userns-remap\" so the running daemon applies it."),
    RuleEntry("runtime", "runtime", "live-restore-active", "live restore is active in the running daemon",
              _S.LOW, "2.15", False,
              "Send SIGHUP to dockerd after setting \"live-restore\": true so the running daemon applies it."),
    RuleEntry("runtime", "runtime", "seccomp-active", "the daemon applies a seccomp profile",
              _S.HIGH, None, False,
              "Run dockerd on a kernel with seccomp and without \"seccomp-profile\": \"unconfined\"."),
    RuleEntry("runtime", "runtime", "apparmor-active", "the daemon applies AppArmor where the kernel has it",
              _S.MEDIUM, None, False,
              "Load AppArmor (apparmor.service) so dockerd applies its docker-default profile."),
    RuleEntry("runtime", "runtime", "config-applied", "what daemon.json says is what the daemon runs with",
              _S.MEDIUM, None, False,
              "Reload dockerd (SIGHUP, or a restart for keys that need one) so it runs with what daemon.json says."),
    RuleEntry("runtime", "runtime", "rootless-daemons", "no per-user (rootless) daemon outside the policy",
              _S.LOW, None, False,
              "Stop the per-user rootless daemon or allow its user in the policy."),
    RuleEntry("runtime", "runtime", "added-capabilities", "containers add no capabilities",
              _S.MEDIUM, "5.4", False,
              "Recreate the container without --cap-add (or with only the capabilities the policy allows)."),
    RuleEntry("runtime", "runtime", "privileged", "no privileged containers",
              _S.CRITICAL, "5.5", False,
              "Recreate the container without --privileged; add only the capabilities and devices it needs."),
    RuleEntry("runtime", "runtime", "sensitive-mount", "no container mounts the host root or a sensitive host path",
              _S.HIGH, "5.6", False,
              "Recreate the container without the host root or sensitive host paths mounted."),
    RuleEntry("runtime", "runtime", "host-network", "no container shares the host's network namespace",
              _S.MEDIUM, "5.10", False,
              "Recreate the container without --network host."),
    RuleEntry("runtime", "runtime", "host-pid", "no container shares the host's process namespace",
              _S.HIGH, "5.16", False,
              "Recreate the container without --pid host."),
    RuleEntry("runtime", "runtime", "no-new-privileges", "containers cannot gain new privileges",
              _S.MEDIUM, "5.26", False,
              "Recreate the container with --security-opt no-new-privileges (or set it daemon-wide)."),
    RuleEntry("runtime", "runtime", "docker-socket-mount", "no container mounts the daemon socket",
              _S.CRITICAL, "5.32", False,
              "Recreate the container without a bind mount of docker.sock: it gives the container root on the host."),
    RuleEntry("host", "host", "tls-cert-expiry", "the daemon's TLS certificates are within their validity",
              _S.HIGH, None, False,
              "Renew the daemon's TLS certificate (tlscert) and restart dockerd."),
    RuleEntry("host", "host", "tls-cert-expiring", "no TLS certificate expires within the warning window",
              _S.LOW, None, False,
              "Renew the daemon's TLS certificate before it expires."),
    RuleEntry("host", "host", "tls-key-match", "the TLS key belongs to the TLS certificate",
              _S.HIGH, None, False,
              "Point tlskey at the private key of tlscert (or issue a new pair)."),
    RuleEntry("host", "host", "tls-key-size", "TLS keys are strong enough (RSA >= 2048, EC >= 256 bits)",
              _S.MEDIUM, None, False,
              "Issue a new key: RSA of at least 2048 bits or EC of at least 256 bits."),
    RuleEntry("host", "host", "tls-ca", "tlscacert holds CA certificates (basicConstraints CA:TRUE)",
              _S.MEDIUM, None, False,
              "Point tlscacert at CA certificates (basicConstraints CA:TRUE)."),
    RuleEntry("host", "host", "tls-cert-issued-by-ca", "the server certificate was issued by tlscacert",
              _S.MEDIUM, None, False,
              "Issue the server certificate from the CA in tlscacert."),
    RuleEntry("host", "host", "sshd-password-auth", "sshd refuses password authentication",
              _S.HIGH, None, False,
              "Set PasswordAuthentication no in sshd_config and reload sshd."),
    RuleEntry("host", "host", "sshd-pubkey-auth", "sshd allows public key authentication",
              _S.LOW, None, False,
              "Set PubkeyAuthentication yes in sshd_config and reload sshd."),
    RuleEntry("host", "host", "sshd-root-login", "sshd restricts root login (no / prohibit-password)",
              _S.HIGH, None, False,
              "Set PermitRootLogin no (or prohibit-password) in sshd_config and reload sshd."),
    RuleEntry("host", "host", "data-root-encrypted", "the daemon's data root is on an encrypted (dm-crypt) device",
              _S.INFO, None, False,
              "Put the daemon's data root on an encrypted (dm-crypt/LUKS) device."),
    RuleEntry("host-layout", "hostLayout", "data-root-partition", "the daemon's data root is a partition of its own",
              _S.LOW, "1.1.1", False,
              "Mount a partition of its own (or a logical volume) on the daemon's data root (/var/lib/docker)."),
    RuleEntry("host-audit", "hostAudit", "audit-dockerd", "the dockerd binary is watched by auditd",
              _S.LOW, "1.1.3", False,
              _AUDIT_REMEDIATION.format("the dockerd binary")),
    RuleEntry("host-audit", "hostAudit", "audit-run-containerd", "/run/containerd is watched by auditd",
              _S.LOW, "1.1.4", False,
              _AUDIT_REMEDIATION.format("/run/containerd")),
    RuleEntry("host-audit", "hostAudit", "audit-data-root", "the daemon's data root is watched by auditd",
              _S.LOW, "1.1.5", False,
              _AUDIT_REMEDIATION.format("the daemon's data root")),
    RuleEntry("host-audit", "hostAudit", "audit-etc-docker", "/etc/docker is watched by auditd",
              _S.LOW, "1.1.6", False,
              _AUDIT_REMEDIATION.format("/etc/docker")),
    RuleEntry("host-audit", "hostAudit", "audit-docker-service", "the docker.service unit is watched by auditd",
              _S.LOW, "1.1.7", False,
              _AUDIT_REMEDIATION.format("the docker.service unit")),
    RuleEntry("host-audit", "hostAudit", "audit-containerd-sock", "containerd's socket is watched by auditd",
              _S.LOW, "1.1.8", False,
              _AUDIT_REMEDIATION.format("containerd's socket")),
    RuleEntry("host-audit", "hostAudit", "audit-docker-socket-unit", "the docker.socket unit is watched by auditd",
              _S.LOW, "1.1.9", False,
              _AUDIT_REMEDIATION.format("the docker.socket unit")),
    RuleEntry("host-audit", "hostAudit", "audit-etc-default-docker", "/etc/default/docker is watched by auditd",
              _S.LOW, "1.1.10", False,
              _AUDIT_REMEDIATION.format("/etc/default/docker")),
    RuleEntry("host-audit", "hostAudit", "audit-daemon-json", "daemon.json is watched by auditd",
              _S.LOW, "1.1.11", False,
              _AUDIT_REMEDIATION.format("daemon.json")),
    RuleEntry("host-audit", "hostAudit", "audit-containerd-config",
              "/etc/containerd/config.toml is watched by auditd",
              _S.LOW, "1.1.12", False,
              _AUDIT_REMEDIATION.format("/etc/containerd/config.toml")),
    RuleEntry("host-audit", "hostAudit", "audit-etc-sysconfig-docker", "/etc/sysconfig/docker is watched by auditd",
              _S.LOW, "1.1.13", False,
              _AUDIT_REMEDIATION.format("/etc/sysconfig/docker")),
    RuleEntry("host-audit", "hostAudit", "audit-containerd", "the containerd binary is watched by auditd",
              _S.LOW, "1.1.14", False,
              _AUDIT_REMEDIATION.format("the containerd binary")),
    RuleEntry("host-audit", "hostAudit", "audit-containerd-shim", "the containerd-shim binary is watched by auditd",
              _S.LOW, "1.1.15", False,
              _AUDIT_REMEDIATION.format("the containerd-shim binary")),
    RuleEntry("host-audit", "hostAudit", "audit-containerd-shim-runc-v1",
              "the containerd-shim-runc-v1 binary is watched by auditd",
              _S.LOW, "1.1.16", False,
              _AUDIT_REMEDIATION.format("the containerd-shim-runc-v1 binary")),
    RuleEntry("host-audit", "hostAudit", "audit-containerd-shim-runc-v2",
              "the containerd-shim-runc-v2 binary is watched by auditd",
              _S.LOW, "1.1.17", False,
              _AUDIT_REMEDIATION.format("the containerd-shim-runc-v2 binary")),
    RuleEntry("host-audit", "hostAudit", "audit-runc", "the runc binary is watched by auditd",
              _S.LOW, "1.1.18", False,
              _AUDIT_REMEDIATION.format("the runc binary")),
)

_CIS_BY_ID = {item.id: item for item in CATALOG}
_RULES_BY_KEY = {(r.control, r.id): r for r in RULES}


def rule_entry(control: str, rule_id: str) -> RuleEntry | None:
    return _RULES_BY_KEY.get((control, rule_id))


def cis_item(cis_id: str) -> CisItem | None:
    return _CIS_BY_ID.get(cis_id)


def control_names() -> list[str]:
    """Control names in the order they run (the catalog keeps that order)."""
    return list(dict.fromkeys(r.control for r in RULES))


@cache
def rule_ids_by_policy_key() -> dict[str, frozenset[str]]:
    """The rule ids each spec.controls key may name: what the policy validates against."""
    out: dict[str, set[str]] = {}
    for r in RULES:
        out.setdefault(r.policy_key, set()).add(r.id)
    return {k: frozenset(v) for k, v in out.items()}


def rules_matching(ids: list[str]) -> tuple[set[tuple[str, str]], list[str]]:
    """The (control, rule) pairs named by CIS ids ("2.2", or a section "1.1"), rule ids
    ("icc", "daemon-config/icc") or control names; and the names that match nothing."""
    found: set[tuple[str, str]] = set()
    unknown: list[str] = []
    for raw in ids:
        name = raw.strip()
        hits = {(r.control, r.id) for r in RULES
                if name in (r.id, r.key, r.control, r.cis) or (r.cis is not None and r.cis.startswith(name + "."))}
        if hits:
            found |= hits
        else:
            unknown.append(name)
    return found, unknown
