//! SecurityGroupPolicy (vpcresources.k8s.aws/v1beta1, the Resource Controller's CRD): which
//! security groups a branch-ENI pod must carry. A policy applies to a pod of its namespace when its
//! `podSelector` matches the pod's labels; the pod's groups are the union of every applying
//! policy's `securityGroups.groupIds`, as the Resource Controller builds the branch ENI.
//! `serviceAccountSelector` selects by the ServiceAccount's labels, which the agent does not read:
//! such a policy is reported and not used (the pod's intent then names no group from it).

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct SecurityGroupPolicy {
    pub name: String,
    pub pod_selector: Option<Value>,
    /// Present: the policy selects by ServiceAccount (not evaluated here).
    pub service_account_selector: bool,
    pub groups: Vec<String>,
}

/// Reads a policy object's spec; the error names the field.
pub fn parse(name: &str, data: &Value) -> Result<SecurityGroupPolicy, String> {
    let spec = data.get("spec").ok_or_else(|| format!("SecurityGroupPolicy `{name}`: no spec"))?;
    let groups = match spec.pointer("/securityGroups/groupIds") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|g| {
                g.as_str().map(str::to_owned).ok_or_else(|| {
                    format!("SecurityGroupPolicy `{name}`: spec.securityGroups.groupIds: expected strings, got {g}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
        Some(other) => {
            return Err(format!(
                "SecurityGroupPolicy `{name}`: spec.securityGroups.groupIds: expected a list, got {other}"
            ))
        }
    };
    Ok(SecurityGroupPolicy {
        name: name.to_owned(),
        pod_selector: spec.get("podSelector").cloned(),
        service_account_selector: spec.get("serviceAccountSelector").is_some(),
        groups,
    })
}

/// A Kubernetes label selector (`matchLabels`, `matchExpressions` with In, NotIn, Exists,
/// DoesNotExist) against `labels`; an empty selector matches everything.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()));
    let exprs_ok = selector.get("matchExpressions").and_then(Value::as_array).is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let have = labels.get(key).map(String::as_str);
            match e.get("operator").and_then(Value::as_str) {
                Some("In") => have.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => have.is_none_or(|v| !values.contains(&v)),
                Some("Exists") => have.is_some(),
                Some("DoesNotExist") => have.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && exprs_ok
}

/// The groups a pod with `labels` must carry (sorted, no duplicates) and the policies that say so.
pub fn groups_for(
    policies: &[SecurityGroupPolicy],
    labels: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let mut groups = Vec::new();
    let mut names = Vec::new();
    for p in policies {
        if p.pod_selector.as_ref().is_some_and(|s| selector_matches(s, labels)) {
            groups.extend(p.groups.iter().cloned());
            names.push(p.name.clone());
        }
    }
    groups.sort();
    groups.dedup();
    (groups, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn pod_selectors_pick_the_policies_and_their_groups_unite() {
        let p = |name: &str, selector: Value, groups: &[&str]| {
            parse(name, &json!({"spec": {"podSelector": selector, "securityGroups": {"groupIds": groups}}}))
                .unwrap()
        };
        let policies = [
            p("db", json!({"matchLabels": {"app": "payments"}}), &["sg-2", "sg-1"]),
            p(
                "tier",
                json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["back"]}]}),
                &["sg-3", "sg-1"],
            ),
            p("none", json!({"matchLabels": {"app": "web"}}), &["sg-9"]),
        ];
        let (groups, names) = groups_for(&policies, &labels(&[("app", "payments"), ("tier", "back")]));
        assert_eq!(groups, ["sg-1", "sg-2", "sg-3"]);
        assert_eq!(names, ["db", "tier"]);
        assert_eq!(groups_for(&policies, &labels(&[("app", "other")])).0, Vec::<String>::new());
        let exprs = json!({"matchExpressions": [
            {"key": "a", "operator": "Exists"}, {"key": "b", "operator": "DoesNotExist"},
            {"key": "c", "operator": "NotIn", "values": ["x"]}]});
        assert!(selector_matches(&exprs, &labels(&[("a", "1"), ("c", "y")])));
        assert!(!selector_matches(&exprs, &labels(&[("a", "1"), ("b", "1")])));
        assert!(selector_matches(&json!({}), &labels(&[])), "an empty selector selects everything");
    }

    #[test]
    fn bad_policies_name_the_field() {
        let e = parse("p", &json!({"spec": {"securityGroups": {"groupIds": "sg-1"}}})).unwrap_err();
        assert!(e.contains("spec.securityGroups.groupIds: expected a list"), "{e}");
        let sa = parse(
            "sa",
            &json!({"spec": {"serviceAccountSelector": {}, "securityGroups": {"groupIds": ["sg-1"]}}}),
        )
        .unwrap();
        assert!(sa.service_account_selector && sa.pod_selector.is_none());
        assert_eq!(groups_for(&[sa], &labels(&[])).0, Vec::<String>::new(), "not evaluated");
    }
}
