#!/usr/bin/env bash
# End-to-end tests of llmopt-host. Each test_* function is one ctest test (cli.<name>), run in
# a fresh temporary directory: bash cli_tests.sh <name>. Needs HOST (llmopt-host), PLUGROOT
# (build/tests/plugins) and CONFIGS (tests/cli/configs) in the environment.
set -u
CLI="$PLUGROOT/cli"

fail() { echo "FAIL: $*" >&2; exit 1; }
# run_host ARGS...: runs the host, capturing stdout, stderr and the exit code.
run_host() {
    "$HOST" "$@" >out.txt 2>err.txt
    rc=$?
}
expect_rc() { [ "$rc" -eq "$1" ] || { cat out.txt err.txt >&2; fail "exit code $rc, expected $1"; }; }
expect_err() { grep -qF -- "$1" err.txt || { cat err.txt >&2; fail "stderr lacks: $1"; }; }
expect_out() { grep -qF -- "$1" out.txt || { cat out.txt >&2; fail "stdout lacks: $1"; }; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }
no_partials() { [ -z "$(find "$1" -name '*.partial' -o -name '*.tmp-*')" ] || fail "half-written files left in $1"; }

# ---- happy path ----
test_run_chain_writes_report_config_and_outputs() {
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml" --out run1
    expect_rc 0
    [ -f run1/report.json ] && [ -f run1/config.yaml ] || fail "report.json or config.yaml missing"
    [ "$(json run1/report.json 'd["status"]')" = ok ] || fail "status not ok"
    [ "$(json run1/report.json '[s["status"] for s in d["stages"]]')" = "['ok', 'ok', 'ok']" ] || fail "stage statuses"
    [ "$(json run1/report.json 'd["stages"][0]["plugin"]["id"]')" = clitest ] || fail "plugin id"
    [ "$(json run1/report.json 'd["llmopt"]["version"]')" != "" ] || fail "host version"
    [ "$(json run1/report.json 'd["threads"] >= 1 and len(d["plugins"]) > 0 and all("summary" in p for p in d["plugins"]) and "openblas_coretype" in d')" = True ] || fail "threads, plugin summaries, OPENBLAS_CORETYPE"
    # total = t0 + 3*t1 + t2 + t3 over 8 elements of 1.0 (the default) each: (1+3+1+1)*8
    [ "$(json run1/report.json '[m["value"] for m in d["stages"][2]["metrics"] if m["name"]=="sum"][0]')" = 48.0 ] || fail "sum metric"
    [ "$(json run1/report.json '[m["value"] for m in d["stages"][2]["metrics"] if m["name"]=="other_tensors"][0]')" = 4.0 ] || fail "second input"
    [ -f run1/scaled/model/model.safetensors ] && [ -f run1/scaled/model/config.json ] || fail "output model not saved"
    grep -q '^    value: 1.0$' run1/config.yaml || fail "resolved config lacks test.make's default value"
    [ "$(json run1/report.json 'd["stages"][0]["inputs"]["model"]')" = None ] || fail "no pipeline model should read null"
    no_partials run1
    expect_out "3 ok, 0 failed"
}

test_unchanged_tensors_are_shared_not_copied() {
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml" --out r
    expect_rc 0
    # test.scale replaced one of four tensors: three stay shared with the input model
    [ "$(json r/report.json '[m["value"] for m in d["stages"][1]["metrics"] if m["name"]=="shared_tensors"][0]')" = 3.0 ] || fail "tensors were copied"
}

test_set_overrides_stage_parameter() {
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml" --set stages.scaled.with.factor=5 --set seed=11 --out r
    expect_rc 0
    [ "$(json r/report.json 'd["stages"][1]["params"]["factor"]')" = 5.0 ] || fail "override not applied"
    [ "$(json r/report.json 'd["seed"]')" = 11 ] || fail "seed override"
}

test_default_run_dir_is_named_after_pipeline() {
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml"
    expect_rc 0
    ls -d runs/chain-* >/dev/null 2>&1 || fail "no runs/chain-<timestamp> directory"
}

test_independent_branches_run_in_parallel() {
    run_host --plugins "$CLI" run "$CONFIGS/branches.yaml" --jobs 2 --out r
    expect_rc 0
    # both started before either finished
    order=$(grep -oE "stage '[ab]' \(test.sleep\) (started|done)" err.txt | awk '{print $2 $4}' | tr -d "'" | tr '\n' ' ')
    case "$order" in "astarted bstarted "*) ;; *) fail "not parallel: $order";; esac
}

test_jobs_1_runs_one_stage_at_a_time() {
    run_host --plugins "$CLI" run "$CONFIGS/branches.yaml" --jobs 1 --out r
    expect_rc 0
    order=$(grep -oE "stage '[ab]' \(test.sleep\) (started|done)" err.txt | awk '{print $2 $4}' | tr -d "'" | tr '\n' ' ')
    [ "$order" = "astarted adone bstarted bdone " ] || fail "order with --jobs 1: $order"
}

test_out_dir_that_is_not_empty_is_refused() {
    mkdir keep && echo precious > keep/file
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml" --out keep
    expect_rc 5
    expect_err "keep: already exists"
    [ "$(cat keep/file)" = precious ] || fail "existing file touched"
}

# ---- failures during a run ----
test_failing_stage_skips_dependants_and_others_finish() {
    run_host --plugins "$CLI" run "$CONFIGS/failing.yaml" --out r
    expect_rc 1
    expect_err "stage 'alone' (test.fail) failed: disk on fire"
    expect_err "stage 'broken' (test.scale) failed: input model has no tensor 'nosuch'"
    st=$(json r/report.json '{s["id"]: s["status"] for s in d["stages"]}')
    [ "$st" = "{'make': 'ok', 'broken': 'failed', 'alone': 'failed', 'after': 'skipped', 'after_after': 'skipped', 'fine': 'ok'}" ] || fail "statuses: $st"
    [ "$(json r/report.json '[s["error"] for s in d["stages"] if s["id"]=="after"][0]')" = "skipped: input stage 'broken' failed" ] || fail "skip reason"
    [ "$(json r/report.json 'd["status"]')" = failed ] || fail "run status"
    [ ! -e r/broken ] || fail "failed stage left a directory"
    no_partials r
}

test_sigint_cancels_and_keeps_finished_stages() {
    "$HOST" --plugins "$CLI" run "$CONFIGS/slow.yaml" --out r >out.txt 2>err.txt &
    pid=$!
    for _ in $(seq 100); do grep -q "stage 'long' (test.sleep) started" err.txt 2>/dev/null && break; sleep 0.05; done
    kill -INT $pid
    wait $pid
    rc=$?
    expect_rc 130
    expect_err "interrupted: cancelling"
    st=$(json r/report.json '{s["id"]: s["status"] for s in d["stages"]}')
    [ "$st" = "{'quick': 'ok', 'long': 'cancelled', 'later': 'cancelled'}" ] || fail "statuses: $st"
    [ "$(json r/report.json 'd["status"]')" = cancelled ] || fail "run status"
    [ -f r/quick/model/model.safetensors ] || fail "finished stage output lost"
    [ ! -e r/long ] || fail "cancelled stage left its directory"
    no_partials r
}

# ---- the pipeline's model ----
test_pipeline_model_is_loaded_and_shared_by_stages() {
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml" --out first
    expect_rc 0
    printf 'name: reuse\nmodel: first/scaled/model\nstages:\n  - {id: s, uses: test.sum}\n  - {id: x, uses: test.scale, with: {which: t2}}\n' > reuse.yaml
    run_host --plugins "$CLI" run reuse.yaml --out second
    expect_rc 0
    expect_err "loading model first/scaled/model"
    # the saved model of the first run: t1 scaled by 3, the rest 1.0, 8 elements each
    [ "$(json second/report.json '[m["value"] for m in d["stages"][0]["metrics"] if m["name"]=="sum"][0]')" = 48.0 ] || fail "loaded model differs"
    [ "$(json second/report.json 'd["stages"][1]["inputs"]["model"]')" = first/scaled/model ] || fail "input not reported"
}

test_truncated_checkpoint_is_one_clear_error() {
    run_host --plugins "$CLI" run "$CONFIGS/chain.yaml" --out first
    head -c 100 first/scaled/model/model.safetensors > cut && mv cut first/scaled/model/model.safetensors
    printf 'name: reuse\nmodel: first/scaled/model\nstages:\n  - {id: s, uses: test.sum}\n' > reuse.yaml
    run_host --plugins "$CLI" run reuse.yaml --out second
    expect_rc 1
    expect_err "first/scaled/model/model.safetensors: "
    [ "$(json second/report.json '[s["status"] for s in d["stages"]]')" = "['skipped']" ] || fail "stage status"
}

test_missing_model_directory_is_a_config_error() {
    printf 'name: m\nmodel: nowhere/model\nstages:\n  - {id: s, uses: test.sum}\n' > m.yaml
    run_host --plugins "$CLI" validate m.yaml
    expect_rc 3
    expect_err "m.yaml:2:8: model 'nowhere/model' does not exist"
}

# ---- bad configs: one line, file:line:col, exit 3 ----
expect_config_error() {  # CONFIG EXPECTED-TEXT
    run_host --plugins "$CLI" validate "$CONFIGS/$1"
    expect_rc 3
    expect_err "$2"
    [ "$(wc -l <err.txt)" -eq 1 ] || { cat err.txt >&2; fail "error is not one line"; }
    run_host --plugins "$CLI" run "$CONFIGS/$1" --out r
    expect_rc 3
    [ ! -e r ] || fail "a run directory was made for a bad config"
}
test_yaml_syntax_error() { expect_config_error syntax.yaml "syntax.yaml:"; grep -qE "syntax.yaml:[0-9]+:[0-9]+: " err.txt || fail "no line:col"; }
test_unknown_stage() { expect_config_error unknown_stage.yaml "unknown_stage.yaml:4:11: unknown stage 'test.mkae'"; expect_err "did you mean 'test.make'"; }
test_unknown_parameter() { expect_config_error unknown_param.yaml "unknown_param.yaml:5:"; expect_err "colour"; }
test_wrong_parameter_type() { expect_config_error wrong_type.yaml "wrong_type.yaml:5:"; expect_err "three"; }
test_parameter_out_of_range() { expect_config_error out_of_range.yaml "out_of_range.yaml:5:"; expect_err "5000"; }
test_input_naming_missing_stage() { expect_config_error missing_input.yaml "missing_input.yaml:4:"; expect_err "'nope'"; }
test_cycle_names_members() { expect_config_error cycle.yaml "cycle.yaml:"; grep -qE "b -> c -> b|c -> b -> c" err.txt || fail "cycle members not named"; }
test_empty_pipeline() { expect_config_error empty.yaml "empty.yaml:2:"; expect_err "empty pipeline"; }
test_stage_validate_hook_runs_before_anything() { expect_config_error stage_validate.yaml "stage_validate.yaml:4:"; expect_err "factor 0 would erase"; }

test_bad_override_is_reported() {
    run_host --plugins "$CLI" validate "$CONFIGS/chain.yaml" --set stages.nosuch.with.n=2
    expect_rc 3
    expect_err "--set stages.nosuch.with.n=2"
}

test_missing_config_file() {
    run_host --plugins "$CLI" validate nowhere.yaml
    expect_rc 3
    expect_err "nowhere.yaml"
}

# ---- CLI surface ----
test_validate_prints_run_order() {
    run_host --plugins "$CLI" validate "$CONFIGS/chain.yaml"
    expect_rc 0
    expect_out "run order: make scaled total"
}

test_help_teaches_commands_and_exit_codes() {
    run_host --help
    expect_rc 0
    for w in run validate plugins describe init "exit codes" LLMOPT_PLUGIN_PATH "--set" environment OPENBLAS_CORETYPE LLMOPT_CPU_FORCE; do expect_out "$w"; done
    run_host run --help
    expect_rc 0
    expect_out "--jobs"
    run_host frobnicate
    expect_rc 2
    expect_err "unknown command 'frobnicate'"
}

test_version() {
    run_host --version
    expect_rc 0
    expect_out "ABI 1."
}

test_describe_shows_params_types_defaults_docs() {
    run_host --plugins "$CLI" describe test.make
    expect_rc 0
    expect_out "size"; expect_out "int in [1, 16777216]"; expect_out "elements per tensor"; expect_out "uses: test.make"
    run_host --plugins "$CLI" describe test.mkae
    expect_rc 2
    expect_err "did you mean 'test.make'"
}

test_init_writes_config_that_validates() {
    run_host --plugins "$CLI" init starter.yaml
    expect_rc 0
    run_host --plugins "$CLI" validate starter.yaml
    expect_rc 0
    run_host --plugins "$CLI" init starter.yaml
    expect_rc 5
    expect_err "already exists"
}

test_plugins_lists_stages() {
    run_host --plugins "$CLI" plugins
    expect_rc 0
    expect_out "loaded"; expect_out "clitest"; expect_out "test.scale"
}

test_plugin_path_env_is_searched() {
    LLMOPT_PLUGIN_PATH="/nonexistent-first:$CLI" "$HOST" plugins >out.txt 2>err.txt
    rc=$?
    expect_rc 4
    expect_out "clitest"
    expect_err "/nonexistent-first"
}

test_missing_plugin_directory() {
    run_host --plugins ./no-such-dir plugins
    expect_rc 4
    expect_err "no-such-dir"
    run_host --plugins ./no-such-dir --plugins "$CLI" run "$CONFIGS/chain.yaml" --out r
    expect_rc 4
    [ ! -e r ] || fail "ran despite a missing plugin directory"
}

# ---- bad plugins: each refused with one line naming the file; the host goes on ----
expect_plugin_line() {  # SET STATE FILE REASON
    run_host --plugins "$PLUGROOT/$1" --plugins "$CLI" plugins
    expect_rc 0
    grep -F "$PLUGROOT/$1/$3" err.txt | grep -F "$2: " | grep -qF -- "$4" || { cat err.txt >&2; fail "no '$2' line for $3 with: $4"; }
    expect_out "clitest"       # the good plugin still loads
    # and a pipeline still runs with the remaining plugins
    run_host --plugins "$PLUGROOT/$1" --plugins "$CLI" run "$CONFIGS/chain.yaml" --out r
    expect_rc 0
}
test_plugin_without_entry_symbol() { expect_plugin_line noentry refused plain.so "no llmopt_plugin_v1 symbol"; }
test_plugin_not_a_shared_object() { expect_plugin_line notelf refused bad.so "not a loadable shared object"; }
test_plugin_abi_major_2() { expect_plugin_line abi2 refused major2.so "built for ABI major 2"; }
test_plugin_minor_newer_than_host() { expect_plugin_line minor_newer refused newer.so "upgrade llmopt"; }
test_plugin_descriptor_too_small() { expect_plugin_line small refused small.so "descriptor is 16 bytes"; }
test_plugin_init_failure_host_goes_on() { expect_plugin_line initfail "init failed" initfail.so "cannot find libfoo.so.3"; }
test_duplicate_stage_names_both_files() {
    expect_plugin_line dup "init failed" b.so "is registered by both"
    grep -F "b.so" err.txt | grep -qF "$PLUGROOT/dup/a.so" || fail "both files not named"
}
test_duplicate_device_names_both_files() {
    expect_plugin_line devdup "init failed" b.so "has memory ops from both"
    grep -F "b.so" err.txt | grep -qF "$PLUGROOT/devdup/a.so" || fail "both files not named"
}
test_malformed_device_ops_name_the_field() { expect_plugin_line devbad "init failed" nofree.so "free is NULL"; }
test_plugins_lists_devices() {
    run_host --plugins "$PLUGROOT/devtest" plugins
    expect_rc 0
    expect_out "devices (1):"; expect_out "test:0 (host memory)  [devtest]"
}
# kjv-tiny on the test device (tests/plugins/devtest, with the cpu plugin's kernels behind it):
# the same logits as on the CPU, prefill and through the KV cache, a batch of two.
test_forward_on_test_device_equals_cpu() {
    local model="$CONFIGS/../../../models/kjv-tiny" cpu="$PLUGROOT/../../plugins" ids="818,262,3726,286,6;11,50,7,1000,3"
    for kv in "" --kv-cache; do
        run_host --plugins "$cpu" forward "$model" --ids "$ids" $kv --out cpu.f32
        expect_rc 0
        run_host --plugins "$cpu" --plugins "$PLUGROOT/devtest" forward "$model" --ids "$ids" $kv --device test --out dev.f32
        expect_rc 0
        [ "$(stat -c %s dev.f32)" -gt 0 ] && cmp -s cpu.f32 dev.f32 || fail "logits on the test device differ ($kv)"
    done
    run_host --plugins "$cpu" forward "$model" --ids 1,2 --device test
    expect_rc 3; expect_err "no memory ops registered for device test"
    run_host --plugins "$cpu" forward "$model" --ids 1,2 --device tpu
    expect_rc 2; expect_err "expected cpu, cuda or test"
}
# The prune and onnx plugins end to end on kjv-tiny, here so that their C code also runs under
# ASan+UBSan (scripts/test.sh runs this suite in both builds); what their outputs compute is held
# to the papers' procedures and to onnxruntime by tests/interop (test_prune.py, test_onnx.py).
test_prune_stages_run_on_our_model() {
    local model="$CONFIGS/../../../models/kjv-tiny" plugins="$PLUGROOT/../../plugins"
    [ -e "$plugins/prune.so" ] || fail "no prune plugin in $plugins"
    cat > p.yaml <<YAML
name: p
model: $model
data:
  cal: $CONFIGS/../../../configs/data/kjv-eval.txt
stages:
  - {id: mag, uses: prune.magnitude, with: {sparsity: 0.5}}
  - {id: wanda, uses: prune.wanda, with: {pattern: "2:4", data: cal, n_samples: 4, seq_len: 32}}
  - {id: sgpt, uses: prune.sparsegpt, with: {sparsity: 0.6, data: cal, n_samples: 4, seq_len: 32, block_size: 64}}
  - {id: sgpt1, uses: prune.sparsegpt, with: {pattern: "4:8", data: cal, n_samples: 4, seq_len: 32, sequential: false}}
outputs: [sgpt]
YAML
    run_host --plugins "$plugins" -q run p.yaml --out r --jobs 2
    expect_rc 0
    [ "$(json r/report.json '[round([m["value"] for m in s["metrics"] if m["name"]=="sparsity"][0], 3) for s in d["stages"]]')" = "[0.5, 0.5, 0.6, 0.5]" ] ||
        { cat r/report.json >&2; fail "sparsity"; }
    run_host --plugins "$plugins" forward r/sgpt/model --ids 1,2,3
    expect_rc 0
    no_partials r
}

# 77: skipped (ctest's SKIP_RETURN_CODE) when protoc-c, libprotobuf-c or libonnx-dev were missing
test_onnx_export_writes_every_graph_form() {
    local model="$CONFIGS/../../../models/kjv-tiny" plugins="$PLUGROOT/../../plugins"
    [ -e "$plugins/onnx.so" ] || { echo "SKIP: the onnx plugin was not built (scripts/install-deps.sh)"; exit 77; }
    cat > o.yaml <<YAML
name: o
model: $model
stages:
  - {id: plain, uses: onnx.export}
  - {id: gen, uses: onnx.export, with: {kv_cache: true, attention_mask: true, logits: last, opset: 18}}
  - {id: ext, uses: onnx.export, with: {external_data: always}}
  - {id: q, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 32, sym: false}}
  - {id: q4, uses: onnx.export, inputs: {model: q}, with: {int8_compute: true}}
YAML
    run_host --plugins "$plugins" -q run o.yaml --out r --jobs 2
    expect_rc 0
    for s in plain gen ext q4; do [ -s "r/$s/model.onnx" ] || fail "no r/$s/model.onnx"; done
    [ -s r/ext/model.onnx.data ] && [ ! -e r/plain/model.onnx.data ] || fail "external data"
    grep -q MatMulNBits r/q4/model.onnx || fail "the 4-bit weights are not MatMulNBits"
    [ "$(stat -c %s r/q4/model.onnx)" -lt "$(stat -c %s r/plain/model.onnx)" ] || fail "the 4-bit graph is not smaller"
    [ -z "$(find r -name '*.tmp')" ] || fail "temporary files left"
    printf 'name: o\nmodel: %s\nstages:\n  - {id: x, uses: onnx.export, with: {file: a/b.onnx}}\n' "$model" > bad.yaml
    run_host --plugins "$plugins" -q run bad.yaml --out r2
    expect_rc 1; expect_err "must be a plain file name"
}

test_kernel_variants_best_wins_others_skipped() {
    run_host --plugins "$PLUGROOT/variants" plugins
    expect_rc 0
    expect_out "kernels-test-v20"
    grep -A1 "skipped" out.txt | grep -qF "no AVX-512" || { cat out.txt >&2; fail "score-0 reason not shown"; }
    grep -A1 "skipped" out.txt | grep -qF "scored higher (20 > 10)" || fail "lower score reason not shown"
}

name="${1:?usage: cli_tests.sh TEST_NAME}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
"$name"
echo "PASS: $name"
