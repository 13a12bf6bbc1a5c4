//! Which ENIConfig a node uses (custom networking), exactly as upstream's
//! `GetNodeSpecificENIConfigName` (pkg/eniconfig/eniconfig.go): the first of
//! 1. the node label `vpc.amazonaws.com/externalEniConfig` (set by an out-of-band source of truth),
//! 2. the node annotation named by ENI_CONFIG_ANNOTATION_DEF,
//! 3. the node label named by ENI_CONFIG_LABEL_DEF,
//! 4. the literal `default`.

use std::collections::BTreeMap;

pub const EXTERNAL_ENI_CONFIG_LABEL: &str = "vpc.amazonaws.com/externalEniConfig";
/// The name used when nothing on the node names one.
pub const DEFAULT_NAME: &str = "default";

/// Where the name came from (for `explain` and log lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    ExternalLabel,
    Annotation,
    Label,
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EniConfigName {
    pub name: String,
    pub source: Source,
}

/// Resolves the node's ENIConfig name from its labels and annotations. Empty values do not count
/// (upstream tests for presence with a non-empty value).
pub fn resolve(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    label_key: &str,
    annotation_key: &str,
) -> EniConfigName {
    let found = |map: &BTreeMap<String, String>, key: &str| map.get(key).filter(|v| !v.is_empty()).cloned();
    let (name, source) = if let Some(n) = found(labels, EXTERNAL_ENI_CONFIG_LABEL) {
        (n, Source::ExternalLabel)
    } else if let Some(n) = found(annotations, annotation_key) {
        (n, Source::Annotation)
    } else if let Some(n) = found(labels, label_key) {
        (n, Source::Label)
    } else {
        (DEFAULT_NAME.to_owned(), Source::Default)
    };
    EniConfigName { name, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ENI_CONFIG_KEY as KEY;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn first_match_wins_in_upstreams_order() {
        let all = map(&[(EXTERNAL_ENI_CONFIG_LABEL, "ext"), (KEY, "label")]);
        let ann = map(&[(KEY, "annotation")]);
        assert_eq!(
            resolve(&all, &ann, KEY, KEY),
            EniConfigName { name: "ext".into(), source: Source::ExternalLabel }
        );
        let labels = map(&[(KEY, "label")]);
        assert_eq!(resolve(&labels, &ann, KEY, KEY).source, Source::Annotation);
        assert_eq!(
            resolve(&labels, &map(&[]), KEY, KEY),
            EniConfigName { name: "label".into(), source: Source::Label }
        );
        assert_eq!(resolve(&map(&[]), &map(&[]), KEY, KEY).name, "default");
    }

    #[test]
    fn the_label_key_is_configurable_and_empty_values_do_not_count() {
        let zone = "topology.kubernetes.io/zone";
        let labels = map(&[(zone, "us-west-2a"), (EXTERNAL_ENI_CONFIG_LABEL, "")]);
        assert_eq!(resolve(&labels, &map(&[(KEY, "")]), zone, KEY).name, "us-west-2a");
        assert_eq!(resolve(&labels, &map(&[]), KEY, KEY).source, Source::Default);
    }
}
