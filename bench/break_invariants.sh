#!/usr/bin/env bash
# Shows that each training invariant's test fails when the code is broken on purpose, then
# passes again: applies one small sabotage at a time, runs the guarding test, restores the file.
#   OMP_NUM_THREADS=1 bash bench/break_invariants.sh
set -u
cd "$(dirname "$0")/.."
T=tests
declare -a CASES=(
  "EOS not trained|src/ragtune/train/data.py|s/        enc.labels.append(e\[\"labels\"\])/        enc.labels.append(e[\"labels\"][:-1] + [IGNORE_INDEX])/|$T/test_train.py::test_labels_mask_exactly_the_prompt_and_keep_eos"
  "collator trains the prompt|src/ragtune/train/data.py|s/                if labels\[t\] != IGNORE_INDEX:/                if True:/|$T/test_train.py::test_labels_mask_exactly_the_prompt_and_keep_eos"
  "per-token sum instead of per-example mean|src/ragtune/train/loss.py|s/index_add_(0, ex, token_loss) \/ counts/index_add_(0, ex, token_loss)/|$T/test_train_invariants.py::test_batch_loss_is_the_mean_of_per_example_losses"
  "packed examples see each other|src/ragtune/train/data.py|s/        mask = same \& causal/        mask = causal.expand_as(same).clone()/|$T/test_train_invariants.py::test_batch_loss_is_the_mean_of_per_example_losses"
  "loss scaled per micro-batch, not per step|src/ragtune/train/engine.py|s/                loss, per_example = wrapped(batch, scale)/                loss, per_example = wrapped(batch, 1.0 \/ len(idx))/|$T/test_train_invariants.py::test_batch_size_times_accumulation_gives_the_same_update"
  "unseeded LoRA init|src/ragtune/train/engine.py|s/    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here/    torch.seed()/|$T/test_train_invariants.py::test_a_fixed_seed_reproduces_the_adapter"
  "resume forgets the RNG state|src/ragtune/train/engine.py|s/        torch.set_rng_state(state\[\"rng\"\])/        pass/|$T/test_train_invariants.py::test_resume_gives_the_same_final_loss_as_uninterrupted"
  "resume forgets the optimizer|src/ragtune/train/engine.py|s/        opt.load_state_dict(state\[\"optimizer\"\])/        pass/|$T/test_train_invariants.py::test_resume_gives_the_same_final_loss_as_uninterrupted"
  "adapter saved with a default template|src/ragtune/train/engine.py|s/    template.save(out)/    PromptTemplate().save(out)/|$T/test_train_invariants.py::test_the_chat_template_saved_with_the_adapter_is_the_one_trained_with"
  "no template check at preprocessing|src/ragtune/train/data.py|s/    check_template(tokenizer, template, prompts\[:50\])/    pass/|$T/test_train_invariants.py::test_the_chat_template_saved_with_the_adapter_is_the_one_trained_with"
)
for c in "${CASES[@]}"; do
  IFS='|' read -r name file sed_expr test <<<"$c"
  cp "$file" /tmp/_break_backup
  sed -i "$sed_expr" "$file"
  if cmp -s "$file" /tmp/_break_backup; then echo "SKIP (sabotage did not apply): $name"; continue; fi
  if python -m pytest -x -q -p no:cacheprovider "$test" >/dev/null 2>&1; then broken="PASSED (bad)"; else broken="failed (good)"; fi
  cp /tmp/_break_backup "$file"
  if python -m pytest -x -q -p no:cacheprovider "$test" >/dev/null 2>&1; then fixed="passes"; else fixed="FAILS"; fi
  echo "$name: broken -> $broken; restored -> $fixed"
done
