//! Named pipelines: the pass lists kiln runs, assembled here and nowhere
//! else, so every command runs the same passes in the same order and every
//! run is timed and verified the same way.
//!
//! - `open`: a loaded model in GGUF naming and layout (evaluation, planning);
//! - `convert`: llama-quantize's job (normalize, recipe, importance);
//! - `assign`: a plan's type table on an opened model (then its importance);
//! - `importance`: importance vectors attached before any decision (planning);
//! - `layout`: which output file each tensor of a planned model goes into
//!   (one per device);
//! - `size`: a recipe on a model synthesized from a config (the cost model
//!   sizes recipes this way: there is no data, so no data-dependent pass).
//!
//! What must stay true: a pipeline's passes run in the listed order, each
//! followed by the verifier; the timings list every pass that ran.

use std::time::Duration;

use serde::Serialize;

use crate::error::PassError;
use crate::ir::Model;

use super::assign::AssignTypes;
use super::importance::AttachImportance;
use super::layout::Shard;
use super::normalize::Normalize;
use super::recipe::ApplyRecipe;
use super::{run_one, Context, Pass};

/// How long one pass took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassTiming {
    pub pass: &'static str,
    pub seconds: f64,
}

impl PassTiming {
    fn new(pass: &'static str, took: Duration) -> PassTiming {
        PassTiming {
            pass,
            seconds: took.as_secs_f64(),
        }
    }
}

/// An ordered list of passes with a name.
pub struct Pipeline {
    pub name: &'static str,
    passes: Vec<Box<dyn Pass + Send + Sync>>,
}

impl Pipeline {
    fn of(name: &'static str, passes: Vec<Box<dyn Pass + Send + Sync>>) -> Pipeline {
        Pipeline { name, passes }
    }

    /// A loaded model in GGUF naming and layout.
    pub fn open() -> Pipeline {
        Pipeline::of("open", vec![Box::new(Normalize)])
    }

    /// llama-quantize's conversion: names, the recipe's types, the imatrix.
    pub fn convert(recipe: ApplyRecipe, importance: Option<AttachImportance>) -> Pipeline {
        let mut passes: Vec<Box<dyn Pass + Send + Sync>> =
            vec![Box::new(Normalize), Box::new(recipe)];
        if let Some(i) = importance {
            passes.push(Box::new(i));
        }
        Pipeline::of("convert", passes)
    }

    /// A plan's types on an opened (normalized) model, then the imatrix.
    pub fn assign(types: AssignTypes, importance: Option<AttachImportance>) -> Pipeline {
        let mut passes: Vec<Box<dyn Pass + Send + Sync>> = vec![Box::new(types)];
        if let Some(i) = importance {
            passes.push(Box::new(i));
        }
        Pipeline::of("assign", passes)
    }

    /// Importance vectors alone (the planner attaches them before any
    /// encoding is decided: every tensor with an entry gets its vector).
    pub fn importance(attach: AttachImportance) -> Pipeline {
        Pipeline::of("importance", vec![Box::new(attach)])
    }

    /// One output file per device for a planned model.
    pub fn layout(shard: Shard) -> Pipeline {
        Pipeline::of("layout", vec![Box::new(shard)])
    }

    /// A recipe on an opened model or one synthesized from a config.
    pub fn size(recipe: ApplyRecipe) -> Pipeline {
        Pipeline::of("size", vec![Box::new(recipe)])
    }

    /// Structured pruning on a loaded model: names and layout first, then
    /// the `prune-*` passes given (see `prune.rs`), in their order.
    pub fn prune(passes: Vec<Box<dyn Pass + Send + Sync>>) -> Pipeline {
        let mut all: Vec<Box<dyn Pass + Send + Sync>> = vec![Box::new(Normalize)];
        all.extend(passes);
        Pipeline::of("prune", all)
    }

    /// A recipe's types on an opened (normalized, maybe pruned) model, then
    /// the imatrix: `convert` without its `normalize`.
    pub fn quantize(recipe: ApplyRecipe, importance: Option<AttachImportance>) -> Pipeline {
        let mut passes: Vec<Box<dyn Pass + Send + Sync>> = vec![Box::new(recipe)];
        if let Some(i) = importance {
            passes.push(Box::new(i));
        }
        Pipeline::of("quantize", passes)
    }

    /// The passes' names, in order.
    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Run every pass in order, each followed by the verifier.
    pub fn run(&self, model: &mut Model, cx: &Context<'_>) -> Result<Vec<PassTiming>, PassError> {
        let mut times = Vec::with_capacity(self.passes.len());
        for p in &self.passes {
            let took = run_one(p.as_ref(), model, cx)?;
            times.push(PassTiming::new(p.name(), took));
        }
        Ok(times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::recipe::{parse_recipe, RecipeOptions};
    use crate::passes::REGISTRY;

    fn prune_passes() -> Vec<Box<dyn Pass + Send + Sync>> {
        use crate::passes::prune::{DropKvGroups, DropLayers, KvSel, NarrowFfn, SharedScratch};
        let scratch = SharedScratch::default();
        vec![
            Box::new(DropKvGroups {
                sel: KvSel::Keep(1),
                tp: 1,
                activations: None,
                scratch: scratch.clone(),
                gguf: true,
            }),
            Box::new(NarrowFfn {
                ratio: 0.5,
                activations: None,
                scratch: scratch.clone(),
            }),
            Box::new(DropLayers {
                layers: vec![0],
                scratch,
                how: String::new(),
            }),
        ]
    }

    #[test]
    fn every_pipeline_uses_registered_passes() {
        let recipe = || ApplyRecipe::new(parse_recipe("Q4_K_M").unwrap(), RecipeOptions::default());
        let pipelines = [
            Pipeline::open(),
            Pipeline::convert(recipe().unwrap(), Some(AttachImportance::default())),
            Pipeline::assign(AssignTypes::default(), Some(AttachImportance::default())),
            Pipeline::size(recipe().unwrap()),
            Pipeline::importance(AttachImportance::default()),
            Pipeline::layout(Shard { devices: 2, cap: 1 }),
            Pipeline::quantize(recipe().unwrap(), None),
            Pipeline::prune(prune_passes()),
        ];
        for p in &pipelines {
            for name in p.pass_names() {
                assert!(
                    REGISTRY.iter().any(|(n, _)| *n == name),
                    "{}: `{name}` is not in REGISTRY",
                    p.name
                );
            }
        }
        assert_eq!(
            pipelines[1].pass_names(),
            ["normalize", "recipe", "importance"]
        );
    }

    #[test]
    fn a_failing_pass_names_itself_and_stops_the_pipeline() {
        let mut m = Model::default();
        m.tensors.push(crate::ir::TensorNode {
            name: "blk.0.attn_q.weight".into(),
            source_name: "blk.0.attn_q.weight".into(),
            shape: vec![4, 32],
            role: crate::Role::AttnQ,
            layer: Some(0),
            source: crate::Source {
                file: 0,
                dtype: crate::SourceDType::F16,
                offset: 0,
                len: 256,
            },
            parts: Vec::new(),
            transform: None,
            encoding: None,
            notes: Vec::new(),
        });
        let err = Pipeline::assign(AssignTypes::default(), None)
            .run(&mut m, &Context::default())
            .unwrap_err();
        assert_eq!(err.pass, "assign");
        assert_eq!(err.tensor.as_deref(), Some("blk.0.attn_q.weight"));
    }
}
