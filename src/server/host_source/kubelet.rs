//! Container names from the kubelet's log links. For every container it
//! starts (init and ephemeral ones too) the kubelet links
//! `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` to the
//! container's log: the one place on a node's disk that ties a container
//! ID to its name in the pod spec, which origin detection's external data
//! names containers by. Pod, namespace and container names are DNS names,
//! which hold no `_`, so the name splits one way.

use std::collections::HashMap;
use std::path::Path;

use super::cgroup::is_container_id;

/// Where the kubelet keeps the links, under the host root.
const LOG_LINKS: &str = "var/log/containers";

/// Links read at most per scan: a node runs a few hundred containers, and
/// the kubelet removes the links of those it deleted.
const MAX_LOG_LINKS: usize = 16_384;

/// The container ID and container name a log link's file name holds.
pub(crate) fn parse_log_link(file_name: &str) -> Option<(&str, &str)> {
    let stem = file_name.strip_suffix(".log")?;
    let (names, id) = stem.rsplit_once('-')?;
    if !is_container_id(id) {
        return None;
    }
    let mut parts = names.split('_');
    let (Some(pod), Some(namespace), Some(container), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if pod.is_empty() || namespace.is_empty() || container.is_empty() {
        return None;
    }
    Some((id, container))
}

/// Container ID -> container name, from the links under `root`; empty where
/// there are none (no kubelet, or the directory is not mounted).
pub(super) fn container_names(root: &Path) -> HashMap<String, String> {
    let Ok(entries) = std::fs::read_dir(root.join(LOG_LINKS)) else {
        return HashMap::new();
    };
    entries
        .take(MAX_LOG_LINKS)
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let (id, container) = parse_log_link(name.to_str()?)?;
            Some((id.to_owned(), container.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4a0e2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    #[test]
    fn a_log_link_names_its_container() {
        assert_eq!(
            parse_log_link(&format!("web-7d4f9-x2x_shop_nginx-proxy-{ID}.log")),
            Some((ID, "nginx-proxy"))
        );
        for bad in [
            format!("web_shop_nginx-{ID}"),
            format!("web_shop_nginx-{}.log", &ID[..63]),
            format!("web_nginx-{ID}.log"),
            format!("web_shop_extra_nginx-{ID}.log"),
            format!("web__nginx-{ID}.log"),
            format!("web_shop_-{ID}.log"),
            "kube-proxy.log".to_owned(),
        ] {
            assert_eq!(parse_log_link(&bad), None, "{bad}");
        }
    }
}
