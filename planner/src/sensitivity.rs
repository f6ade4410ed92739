//! Sensitivity: how much predicted KL divergence a unit of a tensor's
//! noise-to-signal ratio costs. Probed on a text (each group of tensors, a
//! role in a quarter of the layers, encoded alone at about 4.5 bits per
//! weight) or, without a text, kiln's priors by role.
//!
//! What must stay true: a probed group whose probe moved nothing measurable
//! still gets the smallest positive sensitivity seen (its bits are not free);
//! the priors are per role for all layers together, split evenly among the
//! role's tensors.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use eval::planning::{self, Group, Measured, Reference};
use eval::Opened;
use passes::{Model, Role, TensorNode};
use quant::GgmlType;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::progress::{positions, Progress, Unit};

/// Default sensitivity of a role when no text is given to probe with: the
/// predicted KL divergence (nats) per unit of noise-to-signal ratio in all
/// of the role's tensors together (split evenly among them). Measured by
/// `kiln build`'s probes on SmolLM2-135M over Pride and Prejudice
/// (per-tensor sensitivity times the 30 layers, averaged over the four
/// layer quarters, rounded; listed in the README, "How kiln plans");
/// the untied input embedding, which SmolLM2 lacks, is the residual stream's
/// whole input (its noise-to-signal ratio is the stream's at layer 0), so it
/// is weighed like a full role rather than one layer (2, between the
/// attention roles and ffn_down). A prior, not a measurement of your model:
/// give `--text` to probe it.
pub fn default_sensitivity(role: Role) -> f64 {
    match role {
        Role::AttnQ => 1.1,
        Role::AttnK => 1.7,
        Role::AttnV => 2.3,
        Role::AttnOutput => 1.4,
        Role::FfnGate => 2.6,
        Role::FfnUp => 3.5,
        Role::FfnDown => 6.0,
        Role::Output => 8.0,
        Role::Embedding => 2.0,
        _ => 1.0,
    }
}

/// One probed group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSensitivity {
    pub label: String,
    pub tensors: usize,
    /// Mean KL divergence with the group's tensors (only) at their probe encoding.
    pub kld: f64,
    /// Sum of the group's noise-to-signal ratios at the probe encoding.
    pub nsr: f64,
    /// kld / nsr.
    pub sensitivity: f64,
}

/// Each measured tensor's sensitivity, the probed groups (none for the
/// priors), and how they were set, in words.
pub struct Sensitivities {
    pub sensitivity: BTreeMap<String, f64>,
    pub groups: Vec<GroupSensitivity>,
    pub source: String,
}

/// The probe encoding of a tensor: its candidate nearest 4.5 bits per weight.
pub fn probe_type(m: &Measured, n_elements: u64) -> GgmlType {
    m.candidates
        .iter()
        .min_by(|a, b| {
            let d =
                |c: &planning::Candidate| (c.bytes as f64 * 8.0 / n_elements as f64 - 4.5).abs();
            d(a).total_cmp(&d(b)).then(a.nsr.total_cmp(&b.nsr))
        })
        .map(|c| c.ty)
        .expect("a measured tensor has candidates")
}

/// The probe group of a tensor: its role and a quarter of the layers.
pub fn group_label(name: &str, role: Role, layer: Option<usize>, n_layer: usize) -> String {
    let role = match role {
        Role::Other => name.trim_end_matches(".weight").to_string(),
        r => r.name().to_string(),
    };
    match layer {
        Some(l) if n_layer > 0 => {
            let buckets = n_layer.min(4);
            let b = l * buckets / n_layer;
            let lo = b * n_layer / buckets;
            let hi = (b + 1) * n_layer / buckets - 1;
            if lo == hi {
                format!("{role} [{lo}]")
            } else {
                format!("{role} [{lo}-{hi}]")
            }
        }
        _ => role,
    }
}

/// The measured tensors grouped by [`group_label`], groups in model order,
/// each tensor at its [`probe_type`].
pub fn groups(model: &Model, measured: &[Measured]) -> Vec<Group> {
    let n_layer = model.arch.as_ref().map_or(0, |a| a.n_layer);
    let node = |name: &str| model.tensor(name).expect("measured tensors exist");
    let mut by_label: BTreeMap<String, Vec<&Measured>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for m in measured {
        let t = node(&m.name);
        let label = group_label(&t.name, t.role, t.layer, n_layer);
        if !by_label.contains_key(&label) {
            order.push(label.clone());
        }
        by_label.entry(label).or_default().push(m);
    }
    order
        .iter()
        .map(|l| Group {
            label: l.clone(),
            tensors: by_label[l]
                .iter()
                .map(|m| {
                    (
                        m.name.clone(),
                        probe_type(m, node(&m.name).n_elements() as u64),
                    )
                })
                .collect(),
        })
        .collect()
}

/// Probe each group on `windows` and turn the KL divergences into sensitivities.
#[allow(clippy::too_many_arguments)]
pub fn probed(
    opened: &Opened,
    measured: &[Measured],
    importance: &BTreeMap<String, Vec<f32>>,
    windows: &[Vec<u32>],
    ctx: usize,
    progress: &dyn Progress,
    cancel: &AtomicBool,
) -> Result<Sensitivities> {
    let groups = groups(&opened.loaded.model, measured);
    let resume = planning::resume_layers(opened, &groups);
    let reference = Reference::new(opened, windows, &resume, cancel)?;
    progress.start("probing", groups.len() as u64, Unit::Items("groups"));
    let kld = planning::probe(
        opened,
        &reference,
        &groups,
        importance,
        &positions(progress),
        cancel,
    );
    progress.finish();
    let kld = kld?;
    let by_name: BTreeMap<&str, &Measured> =
        measured.iter().map(|m| (m.name.as_str(), m)).collect();
    let out = groups
        .iter()
        .zip(&kld)
        .map(|(g, k)| {
            let nsr: f64 = g
                .tensors
                .iter()
                .map(|(name, ty)| {
                    by_name[name.as_str()]
                        .candidates
                        .iter()
                        .find(|c| c.ty == *ty)
                        .map_or(0.0, |c| c.nsr)
                })
                .sum();
            GroupSensitivity {
                label: g.label.clone(),
                tensors: g.tensors.len(),
                kld: *k,
                nsr,
                sensitivity: if nsr > 0.0 { k.max(0.0) / nsr } else { 0.0 },
            }
        })
        .collect::<Vec<_>>();
    // A group whose probe moved nothing measurable still gets the
    // smallest positive sensitivity seen, so its bits are not free.
    let floor = out
        .iter()
        .map(|g| g.sensitivity)
        .filter(|s| *s > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    let mut sensitivity = BTreeMap::new();
    for (g, gs) in groups.iter().zip(&out) {
        for (name, _) in &g.tensors {
            sensitivity.insert(name.clone(), gs.sensitivity.max(floor));
        }
    }
    Ok(Sensitivities {
        sensitivity,
        source: format!(
            "probed: {} groups (role x quarter of the layers), each encoded alone at ~4.5 bits per weight, KL divergence over {} window(s) of {} tokens",
            groups.len(),
            windows.len(),
            ctx
        ),
        groups: out,
    })
}

/// The role whose default sensitivity applies: a tied embedding is the output.
fn role_of(model: &Model, t: &TensorNode) -> Role {
    if t.role == Role::Embedding && model.tensor("output.weight").is_none() {
        Role::Output
    } else {
        t.role
    }
}

/// kiln's priors by role, split evenly among each role's measured tensors.
pub fn defaults(model: &Model, measured: &[Measured]) -> Sensitivities {
    let node = |name: &str| model.tensor(name).expect("measured tensors exist");
    let mut count: BTreeMap<Role, usize> = BTreeMap::new();
    for m in measured {
        *count.entry(role_of(model, node(&m.name))).or_insert(0) += 1;
    }
    let sensitivity = measured
        .iter()
        .map(|m| {
            let r = role_of(model, node(&m.name));
            (m.name.clone(), default_sensitivity(r) / count[&r] as f64)
        })
        .collect();
    Sensitivities {
        sensitivity,
        groups: Vec::new(),
        source: "defaults by role (no --text to probe with): see README, \"How kiln plans\"".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_labels_cut_the_layers_into_quarters() {
        assert_eq!(
            group_label("blk.0.attn_q.weight", Role::AttnQ, Some(0), 30),
            "attn_q [0-6]"
        );
        assert_eq!(
            group_label("blk.29.ffn_down.weight", Role::FfnDown, Some(29), 30),
            "ffn_down [22-29]"
        );
        assert_eq!(
            group_label("blk.1.attn_k.weight", Role::AttnK, Some(1), 2),
            "attn_k [1]"
        );
        assert_eq!(
            group_label("output.weight", Role::Output, None, 30),
            "output"
        );
        assert_eq!(
            group_label("rope_freqs.weight", Role::Other, None, 30),
            "rope_freqs"
        );
    }
}
