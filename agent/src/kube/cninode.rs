//! CNINode features (vpcresources.k8s.aws/v1alpha1): how the node tells the VPC Resource Controller
//! that it uses custom networking (`CustomNetworking=<ENIConfig name>`) and security groups for
//! pods (`SecurityGroupsForPods`). Features are merged, never replaced: other writers' features
//! stay, and the patch carries the resourceVersion it was computed from (optimistic locking: a
//! concurrent change makes the API server answer 409, and the caller reads again).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const CUSTOM_NETWORKING: &str = "CustomNetworking";
pub const SECURITY_GROUPS_FOR_PODS: &str = "SecurityGroupsForPods";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl Feature {
    pub fn new(name: &str, value: Option<&str>) -> Self {
        Self { name: name.to_owned(), value: value.map(str::to_owned) }
    }
}

/// The features with `feature` set (added, or its value replaced); `None` when it is already there
/// as wanted (nothing to write).
pub fn with_feature(current: &[Feature], feature: &Feature) -> Option<Vec<Feature>> {
    if current.contains(feature) {
        return None;
    }
    let mut out: Vec<Feature> = current.iter().filter(|f| f.name != feature.name).cloned().collect();
    out.push(feature.clone());
    Some(out)
}

/// The merge patch that writes `features`, locked to `resource_version`.
pub fn patch(features: &[Feature], resource_version: &str) -> Value {
    json!({"metadata": {"resourceVersion": resource_version}, "spec": {"features": features}})
}

/// The features of a CNINode object as the API server returned it.
pub fn features_of(cninode: &Value) -> Vec<Feature> {
    cninode.pointer("/spec/features").and_then(|f| serde_json::from_value(f.clone()).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_merge_and_keep_other_writers() {
        let theirs = Feature::new("SomethingElse", Some("x"));
        let cn = Feature::new(CUSTOM_NETWORKING, Some("us-west-2a"));
        let merged = with_feature(std::slice::from_ref(&theirs), &cn).unwrap();
        assert_eq!(merged, vec![theirs.clone(), cn.clone()]);
        assert_eq!(with_feature(&merged, &cn), None, "already there: nothing to write");
        let moved = with_feature(&merged, &Feature::new(CUSTOM_NETWORKING, Some("us-west-2b"))).unwrap();
        assert_eq!(moved.len(), 2);
        let body = patch(&moved, "42");
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        assert_eq!(body["spec"]["features"][1], json!({"name": "CustomNetworking", "value": "us-west-2b"}));
        let obj = json!({"spec": {"features": [{"name": "SecurityGroupsForPods"}]}});
        assert_eq!(features_of(&obj), vec![Feature::new(SECURITY_GROUPS_FOR_PODS, None)]);
        assert!(features_of(&json!({"spec": {}})).is_empty());
    }
}
