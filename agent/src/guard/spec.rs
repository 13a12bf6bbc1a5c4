//! The guard's input: which interface is which ENI (truth) and where each pod must leave (intent).
//!
//! Read from a YAML or JSON file by `eniguard guard --intent FILE` (later filled by the agent's
//! own control plane). Parsing is strict (unknown fields are errors) and validation names the
//! entry and field at fault; nothing is touched in the kernel until a file is valid.

use std::{collections::HashMap, net::IpAddr, path::Path};

use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Interface {
    /// Interface name in the agent's network namespace.
    pub name: String,
    pub eni: String,
    /// 802.1Q VLAN of frames leaving here: the tag on a trunk, or the VLAN a sub-interface adds.
    #[serde(default)]
    pub vlan: u16,
    pub security_groups: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expect {
    pub eni: String,
    #[serde(default)]
    pub vlan: u16,
    pub security_groups: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: String,
    /// Host side of the pod's veth.
    pub host_interface: String,
    pub expect: Expect,
    /// Overrides the node mode for this pod.
    #[serde(default)]
    pub mode: Option<Mode>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub mode: Mode,
    /// Events per pod per second that leave the kernel (the rest are only counted).
    #[serde(default = "default_events_per_pod_per_second")]
    pub events_per_pod_per_second: u32,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub pods: Vec<Pod>,
}

fn default_events_per_pod_per_second() -> u32 {
    10
}

/// A validated pod: its address parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidPod {
    pub pod: Pod,
    pub ip: IpAddr,
}

/// A spec that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidSpec {
    pub mode: Mode,
    pub events_per_pod_per_second: u32,
    pub interfaces: Vec<Interface>,
    pub pods: Vec<ValidPod>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Syntax { path: String, source: serde_yaml::Error },
    #[error("{entry}: {field}: {problem}")]
    Invalid { entry: String, field: &'static str, problem: String },
}

impl Spec {
    pub fn from_file(path: &Path) -> Result<ValidSpec, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SpecError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text)
            .map_err(|e| match e {
                SpecError::Syntax { source, .. } => {
                    SpecError::Syntax { path: path.display().to_string(), source }
                }
                other => other,
            })?
            .validate()
    }

    /// Parses YAML (JSON is accepted as YAML).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        serde_yaml::from_str(text).map_err(|source| SpecError::Syntax { path: "<input>".into(), source })
    }

    pub fn validate(self) -> Result<ValidSpec, SpecError> {
        let mut seen_ifaces: HashMap<(&str, u16), usize> = HashMap::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let entry = format!("interfaces[{i}] ({})", iface.name);
            check_ifname(&entry, "name", &iface.name)?;
            check_id(&entry, "eni", "eni-", &iface.eni)?;
            check_vlan(&entry, iface.vlan)?;
            check_sgs(&entry, &iface.security_groups)?;
            if let Some(j) = seen_ifaces.insert((&iface.name, iface.vlan), i) {
                return Err(invalid(
                    &entry,
                    "name",
                    format!("`{}` with vlan {} is already interfaces[{j}]", iface.name, iface.vlan),
                ));
            }
        }
        let mut seen_ips: HashMap<IpAddr, usize> = HashMap::new();
        let mut seen_veths: HashMap<&str, usize> = HashMap::new();
        let mut pods = Vec::with_capacity(self.pods.len());
        for (i, pod) in self.pods.iter().enumerate() {
            let entry = format!("pods[{i}] ({}/{})", pod.namespace, pod.name);
            if pod.namespace.is_empty() {
                return Err(invalid(&entry, "namespace", "must not be empty".into()));
            }
            if pod.name.is_empty() {
                return Err(invalid(&entry, "name", "must not be empty".into()));
            }
            let ip: IpAddr = pod
                .ip
                .parse()
                .map_err(|_| invalid(&entry, "ip", format!("`{}` is not an IPv4 or IPv6 address", pod.ip)))?;
            if let Some(j) = seen_ips.insert(ip, i) {
                return Err(invalid(&entry, "ip", format!("{ip} is already the address of pods[{j}]")));
            }
            check_ifname(&entry, "hostInterface", &pod.host_interface)?;
            if let Some(j) = seen_veths.insert(&pod.host_interface, i) {
                return Err(invalid(
                    &entry,
                    "hostInterface",
                    format!("`{}` is already the veth of pods[{j}]", pod.host_interface),
                ));
            }
            check_id(&entry, "expect.eni", "eni-", &pod.expect.eni)?;
            check_vlan(&entry, pod.expect.vlan)?;
            check_sgs(&entry, &pod.expect.security_groups)?;
            pods.push(ValidPod { pod: pod.clone(), ip });
        }
        Ok(ValidSpec {
            mode: self.mode,
            events_per_pod_per_second: self.events_per_pod_per_second,
            interfaces: self.interfaces,
            pods,
        })
    }
}

fn invalid(entry: &str, field: &'static str, problem: String) -> SpecError {
    SpecError::Invalid { entry: entry.to_owned(), field, problem }
}

fn check_ifname(entry: &str, field: &'static str, name: &str) -> Result<(), SpecError> {
    // IFNAMSIZ is 16 including the NUL.
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        return Err(invalid(
            entry,
            field,
            format!("`{name}`: expected an interface name of 1 to 15 characters"),
        ));
    }
    Ok(())
}

/// `eni-0a1b…` / `sg-0a1b…`: the prefix, then lowercase hex.
fn check_id(entry: &str, field: &'static str, prefix: &str, id: &str) -> Result<(), SpecError> {
    let ok = id.strip_prefix(prefix).is_some_and(|hex| {
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !ok {
        return Err(invalid(
            entry,
            field,
            format!("`{id}`: expected {prefix} followed by lowercase hex digits"),
        ));
    }
    Ok(())
}

fn check_vlan(entry: &str, vlan: u16) -> Result<(), SpecError> {
    if vlan > 4094 {
        return Err(invalid(entry, "vlan", format!("{vlan}: expected 0 (untagged) to 4094")));
    }
    Ok(())
}

fn check_sgs(entry: &str, sgs: &[String]) -> Result<(), SpecError> {
    if sgs.is_empty() {
        return Err(invalid(entry, "securityGroups", "an ENI always has at least one security group".into()));
    }
    for sg in sgs {
        check_id(entry, "securityGroups", "sg-", sg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
mode: monitor
interfaces:
  - name: eth1
    eni: eni-0a1
    vlan: 0
    securityGroups: [sg-11, sg-22]
pods:
  - namespace: default
    name: web-1
    ip: 10.0.1.10
    hostInterface: enia1b2c3
    expect: { eni: eni-0a1, vlan: 0, securityGroups: [sg-22, sg-11] }
    mode: enforce
"#;

    fn error_of(text: &str) -> String {
        match Spec::parse(text).and_then(Spec::validate) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_documented_shape_in_yaml_and_json() {
        let spec = Spec::parse(GOOD).unwrap().validate().unwrap();
        assert_eq!(spec.pods[0].ip, std::net::Ipv4Addr::new(10, 0, 1, 10));
        assert_eq!(spec.pods[0].pod.mode, Some(Mode::Enforce));
        let json = r#"{"mode":"enforce","interfaces":[{"name":"eth1","eni":"eni-1","securityGroups":["sg-1"]}],"pods":[]}"#;
        let spec = Spec::parse(json).unwrap().validate().unwrap();
        assert_eq!(spec.mode, Mode::Enforce);
        assert_eq!(spec.interfaces[0].vlan, 0);
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        let e = error_of(&GOOD.replace("hostInterface", "hostIface"));
        assert!(e.contains("hostIface"), "{e}");
        let e = error_of(&GOOD.replace("mode: monitor", "mode: audit"));
        assert!(e.contains("audit") && e.contains("monitor"), "{e}");
    }

    #[test]
    fn bad_values_name_the_entry_and_field() {
        assert_eq!(
            error_of(&GOOD.replace("ip: 10.0.1.10", "ip: 10.0.1.300")),
            "pods[0] (default/web-1): ip: `10.0.1.300` is not an IPv4 or IPv6 address"
        );
        assert!(error_of(&GOOD.replace("ip: 10.0.1.10", "ip: \"fd00::1::2\"")).contains("`fd00::1::2`"));
        let six = GOOD.replace("ip: 10.0.1.10", "ip: \"2600:1f14::10\"");
        assert_eq!(Spec::parse(&six).unwrap().validate().unwrap().pods[0].ip.to_string(), "2600:1f14::10");
        assert_eq!(
            error_of(&GOOD.replace("eni: eni-0a1\n", "eni: eni-XYZ\n")),
            "interfaces[0] (eth1): eni: `eni-XYZ`: expected eni- followed by lowercase hex digits"
        );
        assert!(error_of(&GOOD.replace("[sg-11, sg-22]", "[sg-11, default]")).contains("securityGroups"));
        assert!(error_of(&GOOD.replace("vlan: 0\n    securityGroups", "vlan: 5000\n    securityGroups"))
            .contains("4094"));
        assert!(
            error_of(&GOOD.replace("name: eth1", "name: averyveryverylongname")).contains("interfaces[0]")
        );
    }

    #[test]
    fn duplicates_are_errors_naming_both_entries() {
        let two = format!(
            "{GOOD}  - namespace: default\n    name: web-2\n    ip: 10.0.1.10\n    hostInterface: enib\n    expect: {{ eni: eni-0a1, securityGroups: [sg-11] }}\n"
        );
        assert_eq!(
            error_of(&two),
            "pods[1] (default/web-2): ip: 10.0.1.10 is already the address of pods[0]"
        );
        let two = two
            .replace("ip: 10.0.1.10\n    hostInterface: enib", "ip: 10.0.1.11\n    hostInterface: enia1b2c3");
        assert!(error_of(&two).contains("already the veth of pods[0]"));
    }
}
