"""Pure readers of the host's file formats, each as its real consumer reads it.

- gojson: daemon.json as dockerd's Go decoder reads it
- nss_files: /etc/group, passwd and gshadow lines as glibc's nss_files reads them
- posix_acl: the POSIX ACL extended attribute (parse, drop entries, recompute the mask like setfacl)
- sshd_config: sshd's configuration with its Include and Match blocks, bounded
- mountinfo: the kernel's mount table (proc(5)), and which table a pass reads
"""
