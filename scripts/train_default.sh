#!/usr/bin/env bash
# Retrain the embedded default model from scratch on CMU-1-Small-Region, time-bounded.
#   scripts/train_default.sh [TOTAL_MINUTES [AE_MINUTES]]     (default 502 and 50: about the shipped model's budget)
# Stages: the autoencoder and denoiser (TOTAL less every later stage's minutes), then the
# small autoguidance network for that denoiser (GUIDE_STEPS steps, at most GUIDE_MINUTES minutes; default
# 11351 and 60, as shipped), recorded with the default weight AUTOGUIDANCE (1.5), then the adversarial
# decoder fine-tune on that bundle's own samples (GAN_STEPS steps, at most DECODER_MINUTES minutes
# including its sampling; default 1882 and 40, as shipped), then COARSE_MINUTES (default 50, as shipped) more of the
# denoiser, 70% at 5x, with 24 coarse warps for the 5x level (--coarse-warps; guide and decoder kept).
# The finished bundle records STEPS (default 20,60,60: DDIM steps at 20x, 5x, 1.25x) as its sampling
# default (scripts/set_sampling_defaults.py; a new file in runs/, weights unchanged).
# Then the shipped cascade (model card, 2026-12-07 twenty-fifth and twenty-sixth): PIXEL_MINUTES (default 40) of a
# 20x denoiser that reads real 5x pixels (magnifications 20,5,5,1.25, pixel level 1, from that bundle's weights),
# REFINE_MINUTES (default 45) of an adversarial fine-tune of its decoder grown by a full-resolution refiner,
# PIXEL_MORE_MINUTES (default 42) more of that 20x denoiser, its LR annealed over the last 15, installed under the
# refined decoder (scripts/set_denoiser.py), and a bundle whose 5x pixels are quilted from the training part's
# (scripts/make_exemplar_bundle.py), its latent levels sampled by the three-level bundle, and its 1.25x layout made of
# fragments of that exemplar instead of sampled (scripts/set_sampling_defaults.py --layout fragments; model card,
# 2026-12-07 twenty-eighth; LAYOUT=sampled keeps it sampled). PIXEL_MINUTES=0 ships the three-level bundle instead
# (and skips PIXEL_MORE_MINUTES).
# OpenMP threads wait passively (measured 7% slower alone, but no 10x stalls when other jobs share
# the cores); THREADS=1 is another option on a busy machine.
# INIT_AE=BUNDLE reuses that bundle's autoencoder and trains only the denoiser (TOTAL minutes).
# INIT_FROM=BUNDLE continues that bundle's denoiser (fine-tune, fresh optimizer with warm-up); it keeps the
# bundle's guide (and, with DECODER_EVERY=0, its fine-tuned decoder), so GUIDE_MINUTES=0 and DECODER_MINUTES=0
# skip those stages and ship the continued bundle with them.
# MAGS sets the cascade (default 20,5,1.25; e.g. 20,10,5,2.5,1.25), LEVEL_PROBS the share of training
# crops per level, DECODER_EVERY (default 4) how often a decoder-only step runs; LR_DECAY (default 20) the minutes at the
# end of the run over which the denoiser's learning rate anneals to 10%; UNET_LR (default 4e-4) its peak.
# Against fitting the one region: DROPOUT (default 0) the denoiser's dropout while it trains, SCALE_AUG (e.g.
# 0.87,1.15) extra resampling factors of the training image, ELASTIC_AUG (e.g. 3) elastically deformed copies
# of it, ELASTIC_STRAIN (default 0.05) their strength, EARLY_STOP (default 0 = off) validations without a
# better held-out loss before the denoiser stops. SAMPLE_TILE the latent tile `gigagen slide` samples the
# model with by default (recorded in the bundle; unset: the training tile 32; the shipped model: 128).
# The denoiser stage hands on its best held-out checkpoint (runs/default/bundle-best.safetensors,
# validated at every checkpoint) to the later stages, not its last.
# Writes runs/default/, runs/default-guide/, runs/default-decoder/, runs/default-coarse/, runs/default-pixel/ and
# runs/default-refine/ (state, loss.csv/png, bundle), runs/default-final.safetensors (the three-level bundle),
# runs/default-more.safetensors (the refined bundle with the longer-trained 20x denoiser) and
# runs/default-exemplar.safetensors (the four-level one), runs/default-layout.safetensors (it with the fragment layout),
# and copies the final EMA
# bundle to gigagen/weights/default.safetensors when all stages are done (not when stopped: RESUME=1 finishes it).
# Continue a stopped run with RESUME=1.
set -euo pipefail
{ # read whole before running: editing this file during a run must not change that run
cd "$(dirname "$0")/.."
TOTAL=${1:-502}
AE=${2:-50}
GUIDE_MINUTES=${GUIDE_MINUTES:-60}
GUIDE_STEPS=${GUIDE_STEPS:-11351}
DECODER_MINUTES=${DECODER_MINUTES:-40}
GAN_STEPS=${GAN_STEPS:-1882}
COARSE_MINUTES=${COARSE_MINUTES:-50}
PIXEL_MINUTES=${PIXEL_MINUTES:-40}
REFINE_MINUTES=${REFINE_MINUTES:-45}
PIXEL_MORE_MINUTES=${PIXEL_MORE_MINUTES:-42}
(( PIXEL_MINUTES > 0 )) || PIXEL_MORE_MINUTES=0
MAIN=$(( TOTAL - GUIDE_MINUTES - DECODER_MINUTES - COARSE_MINUTES - PIXEL_MINUTES - REFINE_MINUTES - PIXEL_MORE_MINUTES ))
need=$AE  # the autoencoder's minutes, unless a bundle provides the autoencoder
[[ -n "${INIT_FROM:-}${INIT_AE:-}" ]] && need=0
(( GUIDE_MINUTES >= 0 && DECODER_MINUTES >= 0 && COARSE_MINUTES >= 0 && PIXEL_MINUTES >= 0 && REFINE_MINUTES >= 0 && PIXEL_MORE_MINUTES >= 0 )) || { echo "train_default.sh: GUIDE_MINUTES, DECODER_MINUTES, COARSE_MINUTES, PIXEL_MINUTES, REFINE_MINUTES and PIXEL_MORE_MINUTES must be >= 0 (0 skips the stage)" >&2; exit 2; }
(( PIXEL_MINUTES > 0 || REFINE_MINUTES == 0 )) || { echo "train_default.sh: REFINE_MINUTES refines the decoder of the PIXEL_MINUTES stage; give both or set REFINE_MINUTES=0" >&2; exit 2; }
(( MAIN > need )) || { echo "train_default.sh: TOTAL_MINUTES must exceed GUIDE_MINUTES ($GUIDE_MINUTES) + DECODER_MINUTES ($DECODER_MINUTES) + COARSE_MINUTES ($COARSE_MINUTES) + PIXEL_MINUTES ($PIXEL_MINUTES) + REFINE_MINUTES ($REFINE_MINUTES) + PIXEL_MORE_MINUTES ($PIXEL_MORE_MINUTES) + the autoencoder's minutes ($need)" >&2; exit 2; }
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PY=${PY:-.venv/bin/python}
REGION=$("$PY" scripts/fetch_cmu_region.py)
extra=()
[[ "${RESUME:-0}" == 1 ]] && extra+=(--resume)
[[ -n "${INIT_AE:-}" ]] && extra+=(--init-autoencoder "$INIT_AE")
[[ -n "${INIT_FROM:-}" ]] && extra+=(--init-from "$INIT_FROM")
[[ -n "${MAGS:-}" ]] && extra+=(--magnifications "$MAGS")
[[ -n "${LEVEL_PROBS:-}" ]] && extra+=(--level-probs "$LEVEL_PROBS")
[[ -n "${SCALE_AUG:-}" ]] && extra+=(--scale-aug "$SCALE_AUG")
[[ -n "${ELASTIC_AUG:-}" ]] && extra+=(--elastic-aug "$ELASTIC_AUG")
[[ -n "${ELASTIC_STRAIN:-}" ]] && extra+=(--elastic-strain "$ELASTIC_STRAIN")
[[ -n "${SAMPLE_TILE:-}" ]] && extra+=(--sample-tile "$SAMPLE_TILE")
# Autoencoder in fp32 (measured 1.7x faster than bf16 autocast for its backward pass on this CPU),
# denoiser in bf16 autocast (measured 2.4x faster than fp32); fp16 is never used.
nice -n 10 "$PY" -m gigagen.cli train "$REGION" --out runs/default --name gigagen-cmu-default \
    --max-minutes "$MAIN" --ae-minutes "$AE" --holdout-frac 0.2 \
    --ae-base 16 --ae-mult 1,2,4,8 --latent-ch 12 \
    --unet-base 64 --unet-mult 1,2,2 --unet-blocks 1 \
    --ae-batch 8 --ae-crop 128 --unet-batch 16 --tile 32 --layout-tile 16 \
    --decoder-every "${DECODER_EVERY:-4}" \
    --lr-decay-minutes "${LR_DECAY:-20}" --unet-lr "${UNET_LR:-4e-4}" \
    --unet-dropout "${DROPOUT:-0}" --early-stop "${EARLY_STOP:-0}" \
    --precision fp32 --unet-precision bf16 --threads "${THREADS:-2}" --seed "${SEED:-0}" "${extra[@]}"
# Autoguidance (Karras et al. 2024): a 4x smaller denoiser (b32), trained on the same latents at 20x only,
# that `gigagen slide` runs beside the main one at 20x to steer away from a weaker model's errors.
bundle=runs/default/bundle-best.safetensors  # the lowest held-out validation loss of the denoiser stage
[[ -f "$bundle" ]] || bundle=runs/default/bundle.safetensors  # (no held-out band: no validation)
if (( GUIDE_MINUTES > 0 )); then
guide=()
[[ "${RESUME:-0}" == 1 && -f runs/default-guide/state.pt ]] && guide+=(--resume)
nice -n 10 "$PY" -m gigagen.cli train "$REGION" --out runs/default-guide --name gigagen-cmu-default \
    --guide-of "$bundle" --autoguidance "${AUTOGUIDANCE:-1.5}" \
    --unet-base 32 --unet-mult 1,2,2 --unet-blocks 1 --unet-batch 16 \
    --unet-max-steps "$GUIDE_STEPS" --max-minutes "$GUIDE_MINUTES" --holdout-frac 0.2 \
    --unet-precision bf16 --threads "${THREADS:-2}" --seed "${SEED:-0}" "${guide[@]}"
bundle=runs/default-guide/bundle.safetensors
fi
# The decoder learns to render the latents this bundle's denoiser samples (PatchGAN, anchored to the
# original decoder at 16-px scale); encoder, denoiser and guide are kept bit for bit.
if (( DECODER_MINUTES > 0 )); then
dec=()
[[ "${RESUME:-0}" == 1 && -f runs/default-decoder/state.pt ]] && dec+=(--resume)
nice -n 10 "$PY" -m gigagen.cli train "$REGION" --out runs/default-decoder --name gigagen-cmu-default \
    --decoder-of "$bundle" --gan-max-steps "$GAN_STEPS" --max-minutes "$DECODER_MINUTES" \
    --holdout-frac 0.2 --threads "${THREADS:-2}" --seed "${SEED:-0}" "${dec[@]}"
bundle=runs/default-decoder/bundle.safetensors
fi
# The 5x level has 1/16 of the 20x pixels and learns them by heart; coarse warps (elastic deformations at 4x
# the default spacings, for the levels above the finest only) give it new arrangements of the same tissue.
# Guide and decoder are kept; the last checkpoint is shipped, as in 2026-12-05 (model card).
if (( COARSE_MINUTES > 0 )); then
coarse=(--init-from "$bundle")  # a stopped stage resumes from its own state (--init-from starts a new one)
[[ "${RESUME:-0}" == 1 && -f runs/default-coarse/state.pt ]] && coarse=(--resume)
nice -n 10 "$PY" -m gigagen.cli train "$REGION" --out runs/default-coarse --name gigagen-cmu-default \
    --max-minutes "$COARSE_MINUTES" --holdout-frac 0.2 --unet-batch 16 \
    --level-probs 0.3,0.7,0 --decoder-every 0 --lr-decay-minutes 15 --unet-lr 2e-4 --unet-dropout 0.1 \
    --scale-aug 0.87,1.15 --elastic-aug 6 --elastic-strain 0.08 --coarse-warps 24 --coarse-warp-strain 0.08 \
    --unet-precision bf16 --threads "${THREADS:-2}" --seed "${SEED:-0}" "${coarse[@]}"
bundle=runs/default-coarse/bundle.safetensors
fi
# the sampling defaults measured on the shipped model (model card, 2026-12-05 thirteenth): 60 DDIM steps at the
# 5x and layout levels, which cost little (1/16 and 1/256 of the 20x pixels); weights unchanged
final=runs/default-final.safetensors
rm -f "$final"
"$PY" scripts/set_sampling_defaults.py "$bundle" --out "$final" --steps "${STEPS:-20,60,60}"
if (( PIXEL_MINUTES > 0 )); then
# The 20x level learns to draw from real 5x *pixels* (which hold where the nuclei are; the 5x latent does not), the
# 5x latent and layout staying the three-level bundle's; constant LR, as shipped (stopped at its best held-out loss).
px=(--init-from "$final")
[[ "${RESUME:-0}" == 1 && -f runs/default-pixel/state.pt ]] && px=(--resume)
# this run's options, also for its continuation (PIXEL_MORE_MINUTES) below
pixel_run=("$REGION" --out runs/default-pixel --name gigagen-cmu-default --magnifications 20,5,5,1.25 --pixel-levels 1
    --level-probs 1,0,0,0 --holdout-frac 0.2 --unet-batch 16 --decoder-every 0 --unet-lr 4e-4 --unet-dropout 0.1
    --scale-aug 0.87,1.15 --elastic-aug 2 --elastic-strain 0.08 --input-perturbation 0.1 --unet-precision bf16
    --threads "${THREADS:-2}" --seed 21)
nice -n 10 "$PY" -m gigagen.cli train "${pixel_run[@]}" --max-minutes "$PIXEL_MINUTES" --lr-decay-minutes 0 "${px[@]}"
pixel=runs/default-pixel/bundle-best.safetensors
if (( REFINE_MINUTES > 0 )); then
# Its latents hold nuclei the small decoder renders soft: a refiner at full resolution, trained adversarially on
# this denoiser's own samples, used fully (mix 1)
ref=()
[[ "${RESUME:-0}" == 1 && -f runs/default-refine/state.pt ]] && ref+=(--resume)
nice -n 10 "$PY" -m gigagen.cli train "$REGION" --out runs/default-refine --name gigagen-cmu-default \
    --decoder-of "$pixel" --decoder-refine 32 --gan-mix 1 --max-minutes "$REFINE_MINUTES" \
    --holdout-frac 0.2 --threads "${THREADS:-2}" --seed 0 "${ref[@]}"
pixel=runs/default-refine/bundle.safetensors
fi
if (( PIXEL_MORE_MINUTES > 0 )); then
# The 20x denoiser trained on (the decoder was refined on its earlier samples, as shipped), its LR annealed at the end;
# its best checkpoint replaces the denoiser under the refined decoder
nice -n 10 "$PY" -m gigagen.cli train "${pixel_run[@]}" --max-minutes "$PIXEL_MORE_MINUTES" --lr-decay-minutes 15 --resume
if (( REFINE_MINUTES > 0 )); then
rm -f runs/default-more.safetensors
"$PY" scripts/set_denoiser.py "$pixel" --from runs/default-pixel/bundle-best.safetensors --out runs/default-more.safetensors
pixel=runs/default-more.safetensors
fi  # without a refined decoder, $pixel is that run's best checkpoint already
fi
# The 5x pixels of a slide are quilted from the training part's 5x pixels where they match the sampled 5x latent
rm -f runs/default-exemplar.safetensors
"$PY" scripts/make_exemplar_bundle.py "$pixel" --region "$REGION" --coarse-of "$final" --name gigagen-cmu-default \
    --out runs/default-exemplar.safetensors
final=runs/default-exemplar.safetensors
# Its layout level made of deformed fragments of the exemplar: the sampled layout is a purple-pink mush (weights unchanged)
if [[ "${LAYOUT:-fragments}" != sampled ]]; then
rm -f runs/default-layout.safetensors
"$PY" scripts/set_sampling_defaults.py "$final" --out runs/default-layout.safetensors --layout "${LAYOUT:-fragments}"
final=runs/default-layout.safetensors
fi
fi
# only runs that finished replace the shipped weights (set -e stops here otherwise)
cp "$final" gigagen/weights/default.safetensors
echo "default model: gigagen/weights/default.safetensors"
exit
}
