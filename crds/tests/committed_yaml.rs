//! The CRD YAML under charts/kubemail/crds/ is what the Rust types generate: a change to the
//! types without `cargo run -p kubemail-crds --bin crdgen` fails here.
use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(&manifest_dir()).join("../charts/kubemail/crds");
    let mut stale = Vec::new();
    for crd in kubemail_crds::crds() {
        let path = dir.join(kubemail_crds::crd_file_name(&crd));
        let expected = kubemail_crds::crd_yaml(&crd).expect("CRD serializes");
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != expected {
            let first_difference = committed
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .map_or_else(
                    || "length differs".to_string(),
                    |n| format!("line {}", n + 1),
                );
            stale.push(format!("{} ({first_difference})", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD files: {}\nregenerate them with `cargo run -p kubemail-crds --bin crdgen` and commit",
        stale.join(", ")
    );
    let files = std::fs::read_dir(&dir).expect("crds dir").count();
    assert_eq!(
        files,
        kubemail_crds::crds().len(),
        "unexpected files in {}",
        dir.display()
    );
}

#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
            return;
        };
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            // metadata, and the standard Condition's own fields, are described by Kubernetes.
            if here.ends_with(".metadata") || here.contains(".conditions[]") {
                continue;
            }
            let described = prop
                .get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                missing.push(here.clone());
            }
            walk(&here, prop, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in kubemail_crds::crds() {
        let json = serde_json::to_value(&crd).expect("CRD serializes");
        let schema = &json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let kind = crd.spec.names.kind.clone();
        walk(&kind, schema, &mut missing);
    }
    // Fields from k8s-openapi types (resources, label selectors) carry upstream descriptions.
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// This package's directory, as `cargo test` says at run time (a test binary reused from
/// another checkout sharing the target directory would otherwise read that checkout's files).
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}
