//! Checkpoints: `DIR/step-NNNNNNNN/` holds the model (config.json, model.safetensors), the
//! optimiser's moments (optimizer.safetensors) and its step (trainer.json). Each is written into
//! a temporary folder that is renamed into place, then `DIR/latest` (the folder's name) is
//! replaced atomically, so an interrupted run always finds a whole checkpoint.

use super::{TrainConfig, Trainer};
use crate::model::ModelOptions;
use crate::weights::{self, write_atomically};
use crate::{DogeForCausalLM, Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// The file in a checkpoint folder that names the newest checkpoint.
pub const LATEST_FILE: &str = "latest";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const TRAINER_FILE: &str = "trainer.json";

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The newest checkpoint under `dir`, if any.
pub fn latest_checkpoint(dir: &Path) -> Result<Option<PathBuf>> {
    let latest = dir.join(LATEST_FILE);
    if !latest.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(io("read", &latest))?;
    Ok(Some(dir.join(name.trim())))
}

impl Trainer {
    /// Writes a checkpoint of the current step under `dir` and returns its folder.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let name = format!("step-{:08}", self.step());
        let tmp = dir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("remove", &tmp))?;
        }
        self.model.save(&tmp)?;
        let state = self.opt.state();
        let opt_path = tmp.join(OPTIMIZER_FILE);
        candle_core::safetensors::save(&state, &opt_path).map_err(|e| Error::Safetensors {
            path: opt_path.clone(),
            reason: e.to_string(),
        })?;
        let trainer = serde_json::json!({ "step": self.step() }).to_string();
        write_atomically(&tmp.join(TRAINER_FILE), trainer.as_bytes())?;
        let target = dir.join(&name);
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(io("remove", &target))?;
        }
        std::fs::rename(&tmp, &target).map_err(io("rename into place", &target))?;
        write_atomically(&dir.join(LATEST_FILE), name.as_bytes())?;
        Ok(target)
    }

    /// The trainer saved in checkpoint folder `checkpoint`, continuing with `config`.
    pub fn resume(
        checkpoint: &Path,
        options: ModelOptions,
        device: &Device,
        config: TrainConfig,
    ) -> Result<Self> {
        let model = DogeForCausalLM::load(checkpoint, options, device)?;
        let mut trainer = Trainer::new(model, config)?;
        let path = checkpoint.join(TRAINER_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let step = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("step")?.as_u64())
            .ok_or_else(|| Error::Input {
                name: "trainer.json",
                reason: format!("{} has no integer `step`", path.display()),
            })?;
        let state = weights::read(&checkpoint.join(OPTIMIZER_FILE), device)?;
        trainer.opt.restore(step as usize, &state)?;
        Ok(trainer)
    }
}
