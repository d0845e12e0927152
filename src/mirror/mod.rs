//! PLACEHOLDER (replaced by the mirror branch): a simple mirror with the final API.
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::domain::{Cardinality, Entity, EntityEvent, EntityId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityChange {
    pub kind: ChangeKind,
    pub id: EntityId,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}
type Map = Arc<RwLock<BTreeMap<EntityId, Entity>>>;
pub struct MirrorWriter(Map);
#[derive(Clone)]
pub struct MirrorReader(Map);
impl Default for MirrorWriter {
    fn default() -> Self {
        Self::new()
    }
}
impl MirrorWriter {
    pub fn new() -> Self {
        Self(Default::default())
    }
    pub fn reader(&self) -> MirrorReader {
        MirrorReader(self.0.clone())
    }
    pub fn apply(&mut self, events: Vec<EntityEvent>) -> Vec<EntityChange> {
        let mut map = self.0.write().unwrap();
        let mut out = vec![];
        for e in events {
            match e {
                EntityEvent::Added(en) | EntityEvent::Modified(en) => {
                    let id = en.id.clone();
                    let kind = match map.insert(id.clone(), en) {
                        None => ChangeKind::Added,
                        Some(_) => ChangeKind::Modified,
                    };
                    out.push(EntityChange { kind, id });
                }
                EntityEvent::Deleted(id) => {
                    if map.remove(&id).is_some() {
                        out.push(EntityChange {
                            kind: ChangeKind::Deleted,
                            id,
                        });
                    }
                }
            }
        }
        out
    }
    pub fn replace_all(&mut self, entities: Vec<Entity>) -> Vec<EntityChange> {
        let mut map = self.0.write().unwrap();
        let new: BTreeMap<EntityId, Entity> =
            entities.into_iter().map(|e| (e.id.clone(), e)).collect();
        let mut out = vec![];
        for (id, e) in &new {
            match map.get(id) {
                None => out.push(EntityChange {
                    kind: ChangeKind::Added,
                    id: id.clone(),
                }),
                Some(old) if old != e => out.push(EntityChange {
                    kind: ChangeKind::Modified,
                    id: id.clone(),
                }),
                _ => {}
            }
        }
        for id in map.keys() {
            if !new.contains_key(id) {
                out.push(EntityChange {
                    kind: ChangeKind::Deleted,
                    id: id.clone(),
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        *map = new;
        out
    }
    pub fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
impl MirrorReader {
    pub fn tags(&self, id: &str, c: Cardinality) -> Vec<String> {
        self.0
            .read()
            .unwrap()
            .get(id)
            .map(|e| e.tags(c))
            .unwrap_or_default()
    }
    pub fn list(&self) -> Vec<Entity> {
        self.0.read().unwrap().values().cloned().collect()
    }
    pub fn entity(&self, id: &str) -> Option<Entity> {
        self.0.read().unwrap().get(id).cloned()
    }
    pub fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn stored_by_prefix(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for id in self.0.read().unwrap().keys() {
            *m.entry(id.prefix().to_owned()).or_insert(0) += 1;
        }
        m
    }
}
