/* The texts of --help: written to teach, with examples, and the exit codes. */
#include "cli_internal.h"

#include <stdio.h>
#include <string.h>

static const char *const main_help =
"llmopt-host: run post-training optimization pipelines (quantize, prune, distill, fine-tune,\n"
"export, evaluate) over language models, with techniques supplied by plugins.\n"
"\n"
"usage: llmopt-host [--plugins DIR]... [-q|-v] COMMAND [ARGS]\n"
"\n"
"commands:\n"
"  run CFG        run the pipeline described in CFG (YAML)\n"
"  validate CFG   check CFG against the loaded plugins' schemas; run nothing\n"
"  plugins        list plugins found, refused or skipped (and why), their stages and kernels\n"
"  describe STAGE show a stage's inputs and parameters with types, defaults and docs\n"
"  init [FILE]    write a commented starter config (default: pipeline.yaml; '-' for stdout)\n"
"  generate MODEL -p TEXT   generate text with a Hugging Face checkpoint (a quick look)\n"
"  forward MODEL --ids 1,2  write the logits of a token sequence (for comparisons)\n"
"  tokenize DIR --text S   encode text (or --decode ids) with a tokenizer.json\n"
"  help [COMMAND] show this text, or a command's options\n"
"\n"
"global options:\n"
"  --plugins DIR  load plugins (*" LLMOPT_PLUGIN_SUFFIX ") from DIR; repeatable, searched before\n"
"                 LLMOPT_PLUGIN_PATH (colon-separated). With neither, the plugins next to\n"
"                 this executable or the installed ones (" LLMOPT_DEFAULT_PLUGIN_DIR ") are used.\n"
"  --threads N    compute threads for kernels (default: all cores)\n"
"  --max-shard-size SIZE  saved models split their weights into files of at most SIZE\n"
"                 (5GB, 500MB, 2GiB; default 5GB, as transformers' save_pretrained), with\n"
"                 model.safetensors.index.json when there is more than one\n"
"  -q, --quiet    only warnings and errors     -v, --verbose   debug output\n"
"  --version      print the host version, ABI and git revision\n"
"  -h, --help     this text\n"
"\n"
"examples:\n"
"  llmopt-host init my.yaml && llmopt-host validate my.yaml\n"
"  llmopt-host --plugins ./build/plugins run configs/demo.yaml --set seed=7 --jobs 2\n"
"  llmopt-host describe example.scale\n"
"\n"
"environment:\n"
"  LLMOPT_PLUGIN_PATH   more plugin directories, colon-separated (after --plugins)\n"
"  LLMOPT_CPU_FORCE     ref|generic|avx2|avx512: the cpu plugin's SIMD path instead of the detected one\n"
"  LLMOPT_CALIB_STASH_MB  MB of calibration activations GPTQ/AWQ may keep between steps;\n"
"                       above it they are recomputed a sequence at a time (default: a quarter of RAM)\n"
"  OPENBLAS_CORETYPE    OpenBLAS's kernels (Haswell, SkylakeX, ...). Unset, they fit this CPU;\n"
"                       a narrower value is kept and named at start-up ('plugins' shows the kernels)\n"
"\n"
"exit codes:\n"
"  0 success   1 a stage failed   2 bad command line   3 invalid config\n"
"  4 plugin directory unusable   5 run directory not writable   130 interrupted\n";

static const char *const run_help =
"usage: llmopt-host run CFG [--set KEY=VALUE]... [--out DIR] [--jobs N]\n"
"\n"
"Runs every stage of CFG in dependency order; independent stages run in parallel.\n"
"  --set KEY=VALUE  override a config value; stages are addressed by id:\n"
"                   --set seed=3   --set stages.q4.with.bits=3   --set 'outputs=[q4]'\n"
"  --out DIR        run directory (default runs/<name>-<YYYYmmdd-HHMMSS>); must not exist or be empty\n"
"  --jobs N         stages run at most N at a time (default 2)\n"
"\n"
"The run directory gets config.yaml (the resolved config, defaults filled in), report.json\n"
"(status, metrics, wall time and peak memory per stage, seed, plugin versions) and one folder\n"
"per stage that wrote files. A stage's folder appears only when it succeeds. Ctrl-C cancels:\n"
"running stages stop at their next check, finished ones are kept; a second Ctrl-C quits at once.\n";

static const char *const validate_help =
"usage: llmopt-host validate CFG [--set KEY=VALUE]...\n"
"\n"
"Parses CFG, applies overrides, checks every stage name, parameter (type, range, choices),\n"
"input and the graph (no cycles), runs each stage's own checks, and prints the order stages\n"
"would run in. Errors are one line each: FILE:LINE:COL: what was expected.\n";

static const char *const plugins_help =
"usage: llmopt-host [--plugins DIR]... plugins\n"
"\n"
"Lists every plugin file found: loaded, refused (not a plugin, wrong ABI), skipped (another\n"
"variant fits this machine better) or failed, with the reason; then the stages and kernels.\n";

static const char *const describe_help =
"usage: llmopt-host describe STAGE\n"
"\n"
"Shows what a stage does, its inputs, and every parameter with its type, default, allowed\n"
"range or choices and documentation, followed by a config snippet to copy.\n";

static const char *const init_help =
"usage: llmopt-host init [FILE]\n"
"\n"
"Writes a commented starter pipeline to FILE (default pipeline.yaml, '-' for stdout). It never\n"
"overwrites an existing file.\n";

static const char *const generate_help =
"usage: llmopt-host generate MODEL_DIR (-p TEXT | --ids 1,2,3) [options]\n"
"\n"
"Runs a GPT-2 or Llama checkpoint (config.json, *.safetensors, tokenizer.json) and prints the\n"
"continuation as it is produced.\n"
"  --max-tokens N          new tokens at most (default 64)\n"
"  --greedy                always the most likely token (else sampling)\n"
"  --temperature T         sampling temperature (default 0.8)\n"
"  --top-k K               sample among the K most likely tokens (default 40; 0 = all)\n"
"  --top-p P               ... and the smallest set holding probability P (default 0.95)\n"
"  --repetition-penalty R  penalise tokens already present (default 1 = off; 1.1-1.3 typical)\n"
"  --stop STRING           stop when the text contains STRING (repeatable)\n"
"  --seed N                sampling seed (default 0)\n"
"  --ignore-eos            keep going after the end-of-sequence token\n"
"  --print-ids             print the generated token ids as JSON instead of text\n"
"  --chat                  send the prompt as a user turn through the model's chat template\n"
"  --system TEXT           ... after this system turn (implies --chat)\n"
"  --matmul-precision P    highest (default): f32 products; medium: x and weights rounded to\n"
"                          bf16 in prompt matmuls, about 2x faster prompts where the CPU has\n"
"                          AVX-512 BF16 (torch.set_float32_matmul_precision's names)\n"
"example:\n"
"  llmopt-host generate models/kjv-tiny -p 'In the beginning' --max-tokens 40 --greedy\n";

static const char *const tokenize_help =
"usage: llmopt-host tokenize DIR (--text STRING | --file PATH) [--decode] [--no-special]\n"
"\n"
"Encodes with the Hugging Face tokenizer in DIR (its tokenizer.json, or the file itself) and\n"
"prints one JSON line {\"ids\": [...], \"n\": N}, the ids tokenizers' Tokenizer.encode(text).ids\n"
"gives (post-processor included: e.g. Llama's <s>). With --decode the text or file holds a JSON\n"
"array of ids; the decoded text is printed as it is, with no newline added.\n"
"  --text STRING  the input itself (--text=STRING when it starts with '-')\n"
"  --file PATH    read the input from PATH, all of it\n"
"  --decode       ids to text instead of text to ids\n"
"  --no-special   encode: no post-processor tokens (bos/eos); decode: drop special tokens\n"
"Ill-formed UTF-8 input reads as U+FFFD per maximal ill-formed subpart, as Python's lossy decoding\n"
"gives it to tokenizers (byte-level tokenizers keep the bytes).\n"
"exit codes: 0 ok, 2 bad arguments or ids, 3 tokenizer files unusable, 5 input unreadable.\n"
"example:\n"
"  llmopt-host tokenize models/kjv-tiny --text 'In the beginning'\n"
"  llmopt-host tokenize models/kjv-tiny --decode --text '[818, 262, 3726]'\n";

static const char *const forward_help =
"usage: llmopt-host forward MODEL_DIR --ids 1,2,3[;4,5,6...] [--out FILE] [--kv-cache] [--device D]\n"
"                           [--matmul-precision highest|medium]\n"
"\n"
"Runs the token ids through the model. With --out, writes the logits of every position as raw\n"
"little-endian float32 [sequences, tokens, vocab]; without, prints the most likely next token.\n"
"Sequences of equal length separated by ';' run as one batch. --kv-cache feeds the tokens one\n"
"at a time through the KV cache instead of all at once (both must agree). --device cpu|cuda|test\n"
"runs it on that device (default cpu): its plugin's memory ops and kernels must be loaded.\n"
"--matmul-precision medium lets kernels round x and the weights to bf16 before multiplying (sums\n"
"stay f32), as the pipeline key matmul_precision does; highest (default) multiplies exactly.\n";

int cli_help(const char *topic) {
    struct { const char *name, *text; } topics[] = {
        {"run", run_help},           {"validate", validate_help}, {"plugins", plugins_help},
        {"describe", describe_help}, {"init", init_help},
        {"generate", generate_help}, {"forward", forward_help}, {"tokenize", tokenize_help},
    };
    if (!topic) {
        fputs(main_help, stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof topics / sizeof topics[0]; i++)
        if (strcmp(topic, topics[i].name) == 0) {
            fputs(topics[i].text, stdout);
            return 0;
        }
    fprintf(stderr, "llmopt-host: no help for '%s'; commands are run, validate, plugins, describe, init\n",
            topic);
    return EXIT_USAGE;
}
