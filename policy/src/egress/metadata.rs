//! Cloud metadata and credential endpoints: the one list of them.
//!
//! These services hand out instance credentials (IAM roles, managed identities, service-account
//! tokens) to whoever can open a connection from the host, so no Worker may ever reach them, not
//! even under `allow_private`: [`classify_ip`](super::classify_ip) classes every address below
//! as [`BlockedRange::CloudMetadata`](super::BlockedRange::CloudMetadata), also in its
//! IPv4-mapped, IPv4-compatible, NAT64 and 6to4 forms, and
//! [`check_name`](super::check_name) refuses the well-known host names before any DNS lookup.
//!
//! What is **not** covered here, because it depends on the deployment: the Kubernetes API
//! server's service IP (the first address of the service CIDR, e.g. `10.96.0.1` with kubeadm,
//! `172.20.0.1` on EKS, `10.0.0.1` on AKS) and the kubelet on the node IP. The API server is
//! refused by its in-cluster names (`kubernetes`, `kubernetes.default`,
//! `kubernetes.default.svc`, `kubernetes.default.svc.<cluster domain>`); its IP is a private
//! address, closed unless a rule opts in with `allow_private`. Operators must not write
//! `allow_private` rules for the cluster's service range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One known metadata or credential endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetadataEndpoint {
    /// Its address.
    pub ip: IpAddr,
    /// Who serves it, e.g. `AWS ECS task credentials`.
    pub service: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, service: &'static str) -> MetadataEndpoint {
    MetadataEndpoint {
        ip: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        service,
    }
}

const fn v6(s: [u16; 8], service: &'static str) -> MetadataEndpoint {
    let [a, b, c, d, e, f, g, h] = s;
    MetadataEndpoint {
        ip: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
        service,
    }
}

/// Every known cloud metadata / credential endpoint address, with its sources.
pub const METADATA_ENDPOINTS: &[MetadataEndpoint] = &[
    // AWS EC2 IMDS: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html
    // GCP: https://cloud.google.com/compute/docs/metadata/querying-metadata
    // Azure IMDS: https://learn.microsoft.com/en-us/azure/virtual-machines/instance-metadata-service
    // Oracle OCI: https://docs.oracle.com/en-us/iaas/Content/Compute/Tasks/gettingmetadata.htm
    // DigitalOcean: https://docs.digitalocean.com/reference/api/metadata/
    // OpenStack Nova: https://docs.openstack.org/nova/latest/user/metadata.html
    // (also IBM Cloud, Hetzner, Vultr, Exoscale, Huawei, Linode/Akamai use this address)
    v4(
        169,
        254,
        169,
        254,
        "instance metadata service (AWS, GCP, Azure, Oracle, DigitalOcean, OpenStack, ...)",
    ),
    // AWS EC2 IMDS over IPv6 (Nitro):
    // https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html
    v6(
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254],
        "AWS instance metadata service (IPv6)",
    ),
    // AWS ECS task metadata and task IAM role credentials:
    // https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html
    v4(169, 254, 170, 2, "AWS ECS task credentials"),
    // Amazon EKS Pod Identity Agent:
    // https://docs.aws.amazon.com/eks/latest/userguide/pod-id-how-it-works.html
    v4(169, 254, 170, 23, "AWS EKS Pod Identity agent"),
    v6(
        [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23],
        "AWS EKS Pod Identity agent (IPv6)",
    ),
    // Azure WireServer / host agent (a public address!):
    // https://learn.microsoft.com/en-us/azure/virtual-network/what-is-ip-address-168-63-129-16
    v4(168, 63, 129, 16, "Azure WireServer"),
    // GCP metadata server over IPv6:
    // https://cloud.google.com/compute/docs/metadata/querying-metadata
    v6(
        [0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254],
        "GCP metadata server (IPv6)",
    ),
    // Alibaba Cloud ECS:
    // https://www.alibabacloud.com/help/en/ecs/user-guide/view-instance-metadata
    v4(100, 100, 100, 200, "Alibaba Cloud instance metadata"),
    // Oracle Cloud Infrastructure Classic:
    // https://docs.oracle.com/en/cloud/iaas-classic/compute-iaas-cloud/stcsg/retrieving-instance-metadata.html
    v4(192, 0, 0, 192, "Oracle Cloud instance metadata"),
    // OpenStack metadata over IPv6 link-local:
    // https://specs.openstack.org/openstack/neutron-specs/specs/ussuri/metadata-add-ipv6-support.html
    v6(
        [0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe],
        "OpenStack metadata service (IPv6)",
    ),
    // Tencent Cloud CVM (metadata.tencentyun.com):
    // https://www.tencentcloud.com/document/product/213/4934
    v4(169, 254, 0, 23, "Tencent Cloud instance metadata"),
    // Scaleway instance metadata:
    // https://docs.cloud-init.io/en/latest/reference/datasources/scaleway.html
    v4(169, 254, 42, 42, "Scaleway instance metadata"),
    v6(
        [0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42],
        "Scaleway instance metadata (IPv6)",
    ),
    // Akamai / Linode Metadata service over IPv6:
    // https://docs.cloud-init.io/en/latest/reference/datasources/akamai.html
    v6(
        [0xfd00, 0xa9fe, 0xa9fe, 0, 0, 0, 0, 1],
        "Akamai/Linode metadata service (IPv6)",
    ),
];

/// How a host name of [`METADATA_NAMES`] is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameMatch {
    /// Exactly this name.
    Exact(&'static str),
    /// This name, or any name it is a dotted prefix of (`kubernetes.default.svc.` + cluster
    /// domain).
    Prefix(&'static str),
    /// Any name whose first label is this and whose last label is `internal` (AWS's
    /// `instance-data.<region>.compute.internal`).
    FirstLabelInternal(&'static str),
}

/// Host names of metadata / credential services, refused by name before any DNS lookup.
pub const METADATA_NAMES: &[(NameMatch, &str)] = &[
    // GCP: https://cloud.google.com/compute/docs/metadata/querying-metadata
    (
        NameMatch::Exact("metadata.google.internal"),
        "GCP metadata server",
    ),
    (NameMatch::Exact("metadata.goog"), "GCP metadata server"),
    (NameMatch::Exact("metadata"), "GCP metadata server"),
    // AWS: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html
    (
        NameMatch::Exact("instance-data"),
        "AWS instance metadata service",
    ),
    (
        NameMatch::FirstLabelInternal("instance-data"),
        "AWS instance metadata service",
    ),
    // Tencent Cloud: https://www.tencentcloud.com/document/product/213/4934
    (
        NameMatch::Exact("metadata.tencentyun.com"),
        "Tencent Cloud instance metadata",
    ),
    // Equinix Metal (authenticates by source address, on a public IP):
    // https://deploy.equinix.com/developers/docs/metal/server-metadata/metadata/
    (
        NameMatch::Exact("metadata.platformequinix.com"),
        "Equinix Metal metadata",
    ),
    (
        NameMatch::Exact("metadata.packet.net"),
        "Equinix Metal metadata",
    ),
    // Kubernetes API server's in-cluster names:
    // https://kubernetes.io/docs/tasks/run-application/access-api-from-pod/
    (NameMatch::Exact("kubernetes"), "Kubernetes API server"),
    (
        NameMatch::Exact("kubernetes.default"),
        "Kubernetes API server",
    ),
    (
        NameMatch::Prefix("kubernetes.default.svc"),
        "Kubernetes API server",
    ),
];

/// The metadata endpoint at exactly `ip` (no embedded forms; see
/// [`metadata_endpoint`](super::metadata_endpoint)).
pub(super) fn exact(ip: IpAddr) -> Option<&'static MetadataEndpoint> {
    METADATA_ENDPOINTS.iter().find(|e| e.ip == ip)
}

/// The service behind a metadata host name, if `name` is one. Compared ASCII
/// case-insensitively, ignoring one trailing dot.
pub(super) fn name_service(name: &str) -> Option<&'static str> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    METADATA_NAMES.iter().find_map(|&(rule, service)| {
        let hit = match rule {
            NameMatch::Exact(n) => name == n,
            NameMatch::Prefix(p) => {
                name == p
                    || name
                        .strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with('.'))
            }
            NameMatch::FirstLabelInternal(label) => {
                name.split('.').next() == Some(label)
                    && name.contains('.')
                    && name.rsplit('.').next() == Some("internal")
            }
        };
        hit.then_some(service)
    })
}
