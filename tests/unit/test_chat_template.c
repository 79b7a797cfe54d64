/* Unit tests for the chat template interpreter (host/runtime/chat_template.c): public templates
 * (ChatML, Llama-2, Zephyr, Mistral-instruct v0.1 and v0.3, Gemma and a Gemma-3 style text
 * template) rendered for fixed conversations, compared with the strings transformers 4.47.1's
 * tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=...) returned for
 * them with bos_token "<s>" and eos_token "</s>"; then the errors a bad or runaway template gets. */
#define _POSIX_C_SOURCE 200809L /* localtime_r */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/chat_template.h"

static const chat_message SYS_USER_ASST_USER[] = {
    {"system", "You are a helpful assistant."},
    {"user", "Hello, who are you?"},
    {"assistant", "  I am an AI.  "},
    {"user", "What can you do?\n"},
};

static const chat_message USER_ASST_USER[] = {
    {"user", "Hi"},
    {"assistant", "Hello! How can I help?"},
    {"user", "Tell me a joke about 'quotes' and \"doubles\" {{ not a tag }}."},
};

#define N_OF(a) (sizeof(a) / sizeof *(a))

static const char *const TMPL_CHATML =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n"
    "' + message['content'] + '<|im_end|>' + '\n"
    "'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n"
    "' }}{% endif %}";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) */
static const char *const WANT_CHATML_NOGEN =
    "<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
    "Hello, who are you?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "  I am an AI.  <|im_end|>\n"
    "<|im_start|>user\n"
    "What can you do?\n"
    "<|im_end|>\n";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) */
static const char *const WANT_CHATML_GEN =
    "<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
    "Hello, who are you?<|im_end|>\n"
    "<|im_start|>assistant\n"
    "  I am an AI.  <|im_end|>\n"
    "<|im_start|>user\n"
    "What can you do?\n"
    "<|im_end|>\n"
    "<|im_start|>assistant\n";

static const char *const TMPL_LLAMA2 =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system"
    "_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set syst"
    "em_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] =="
    " 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message "
    "!= false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['"
    "content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'"
    "] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['ro"
    "le'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) */
static const char *const WANT_LLAMA2_NOGEN =
    "<s>[INST] <<SYS>>\n"
    "You are a helpful assistant.\n"
    "<</SYS>>\n"
    "\n"
    "Hello, who are you? [/INST] I am an AI. </s><s>[INST] What can you do? [/INST]";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) */
static const char *const WANT_LLAMA2_GEN =
    "<s>[INST] <<SYS>>\n"
    "You are a helpful assistant.\n"
    "<</SYS>>\n"
    "\n"
    "Hello, who are you? [/INST] I am an AI. </s><s>[INST] What can you do? [/INST]";

static const char *const TMPL_ZEPHYR =
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n"
    "' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n"
    "' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n"
    "'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n"
    "{% endif %}\n"
    "{% endfor %}";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) */
static const char *const WANT_ZEPHYR_NOGEN =
    "<|system|>\n"
    "You are a helpful assistant.</s>\n"
    "<|user|>\n"
    "Hello, who are you?</s>\n"
    "<|assistant|>\n"
    "  I am an AI.  </s>\n"
    "<|user|>\n"
    "What can you do?\n"
    "</s>\n";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) */
static const char *const WANT_ZEPHYR_GEN =
    "<|system|>\n"
    "You are a helpful assistant.</s>\n"
    "<|user|>\n"
    "Hello, who are you?</s>\n"
    "<|assistant|>\n"
    "  I am an AI.  </s>\n"
    "<|user|>\n"
    "What can you do?\n"
    "</s>\n"
    "<|assistant|>\n";

static const char *const TMPL_MISTRAL_V01 =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.inde"
    "x0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/as"
    "sistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['conten"
    "t'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_tok"
    "en}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif"
    " %}{% endfor %}";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) raises: Conversation roles must alternate user/assistant/user/assistant/... */
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) raises: Conversation roles must alternate user/assistant/user/assistant/... */

static const char *const TMPL_MISTRAL_V03 =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alt"
    "ernate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    "            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- '[INST] ' + message['content'] + '[/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exceptio"
    "n of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) */
static const char *const WANT_MISTRAL_V03_NOGEN =
    "<s>[INST] Hello, who are you?[/INST]   I am an AI.  </s>[INST] You are a helpful assistant."
    "\n"
    "\n"
    "What can you do?\n"
    "[/INST]";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) */
static const char *const WANT_MISTRAL_V03_GEN =
    "<s>[INST] Hello, who are you?[/INST]   I am an AI.  </s>[INST] You are a helpful assistant."
    "\n"
    "\n"
    "What can you do?\n"
    "[/INST]";

static const char *const TMPL_GEMMA =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assista"
    "nt/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role ="
    " 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role"
    " + '\n"
    "' + message['content'] | trim + '<end_of_turn>\n"
    "' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n"
    "'}}{% endif %}";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) raises: System role not supported */
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) raises: System role not supported */

static const char *const TMPL_GEMMA3_TEXT =
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- set first_user_prefix = messages[0]['content'] + '\n"
    "\n"
    "' -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistan"
    "t/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n"
    "' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n"
    "' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n"
    "'}}\n"
    "{%- endif -%}\n";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=False) */
static const char *const WANT_GEMMA3_TEXT_NOGEN =
    "<s><start_of_turn>user\n"
    "You are a helpful assistant.\n"
    "\n"
    "Hello, who are you?<end_of_turn>\n"
    "<start_of_turn>model\n"
    "I am an AI.<end_of_turn>\n"
    "<start_of_turn>user\n"
    "What can you do?<end_of_turn>\n";
/* apply_chat_template(SYS_USER_ASST_USER, add_generation_prompt=True) */
static const char *const WANT_GEMMA3_TEXT_GEN =
    "<s><start_of_turn>user\n"
    "You are a helpful assistant.\n"
    "\n"
    "Hello, who are you?<end_of_turn>\n"
    "<start_of_turn>model\n"
    "I am an AI.<end_of_turn>\n"
    "<start_of_turn>user\n"
    "What can you do?<end_of_turn>\n"
    "<start_of_turn>model\n";

/* apply_chat_template(USER_ASST_USER) */
static const char *const WANT_LLAMA2_NOSYS =
    "<s>[INST] Hi [/INST] Hello! How can I help? </s><s>[INST] Tell me a joke about 'quotes' and"
    " \"doubles\" {{ not a tag }}. [/INST]";
/* apply_chat_template(USER_ASST_USER) */
static const char *const WANT_MISTRAL_V01_NOSYS =
    "<s>[INST] Hi [/INST]Hello! How can I help?</s>[INST] Tell me a joke about 'quotes' and \"do"
    "ubles\" {{ not a tag }}. [/INST]";
/* apply_chat_template(USER_ASST_USER) */
static const char *const WANT_GEMMA_NOSYS =
    "<s><start_of_turn>user\n"
    "Hi<end_of_turn>\n"
    "<start_of_turn>model\n"
    "Hello! How can I help?<end_of_turn>\n"
    "<start_of_turn>user\n"
    "Tell me a joke about 'quotes' and \"doubles\" {{ not a tag }}.<end_of_turn>\n";

/* Renders and compares with want; a mismatch prints both. */
static void check_render(const char *tmpl, const chat_message *msgs, size_t n, int gen, const char *want) {
    char *out = NULL;
    size_t len = 0;
    llmopt_error err = {0};
    int rc = chat_render(tmpl, msgs, n, "<s>", "</s>", gen, &out, &len, &err);
    if (rc != 0) fail_msg("chat_render failed (%d): %s", rc, err.msg);
    assert_non_null(out);
    assert_int_equal(len, strlen(out));
    assert_string_equal(out, want);
    free(out);
}

/* Renders expecting status; returns the error message (static storage). */
static const char *render_error(const char *tmpl, const chat_message *msgs, size_t n, int status) {
    static llmopt_error err;
    char *out = (char *)1;
    size_t len = 7;
    memset(&err, 0, sizeof err);
    int rc = chat_render(tmpl, msgs, n, "<s>", "</s>", 1, &out, &len, &err);
    if (rc != status) fail_msg("expected status %d, got %d: %s", status, rc, err.msg);
    assert_null(out);
    assert_int_equal(len, 0);
    return err.msg;
}

static void test_chatml_renders_as_transformers(void **state) {
    (void)state;
    check_render(TMPL_CHATML, SYS_USER_ASST_USER, 4, 0, WANT_CHATML_NOGEN);
    check_render(TMPL_CHATML, SYS_USER_ASST_USER, 4, 1, WANT_CHATML_GEN);
}

static void test_llama2_folds_the_system_message_into_the_first_turn(void **state) {
    (void)state;
    check_render(TMPL_LLAMA2, SYS_USER_ASST_USER, 4, 0, WANT_LLAMA2_NOGEN);
    check_render(TMPL_LLAMA2, SYS_USER_ASST_USER, 4, 1, WANT_LLAMA2_GEN);
    check_render(TMPL_LLAMA2, USER_ASST_USER, 3, 0, WANT_LLAMA2_NOSYS);
}

static void test_llama2_rejects_non_alternating_roles_with_the_templates_message(void **state) {
    (void)state;
    static const chat_message two_users[] = {{"user", "a"}, {"user", "b"}};
    const char *msg = render_error(TMPL_LLAMA2, two_users, 2, LLMOPT_EINVAL);
    assert_non_null(strstr(msg, "Conversation roles must alternate user/assistant/user/assistant/..."));
}

static void test_zephyr_keeps_the_newlines_after_expressions_and_trims_after_blocks(void **state) {
    (void)state;
    check_render(TMPL_ZEPHYR, SYS_USER_ASST_USER, 4, 0, WANT_ZEPHYR_NOGEN);
    check_render(TMPL_ZEPHYR, SYS_USER_ASST_USER, 4, 1, WANT_ZEPHYR_GEN);
}

static void test_mistral_v01_renders_user_assistant_turns(void **state) {
    (void)state;
    check_render(TMPL_MISTRAL_V01, USER_ASST_USER, 3, 0, WANT_MISTRAL_V01_NOSYS);
}

static void test_mistral_v01_raises_on_a_system_message(void **state) {
    (void)state;
    const char *msg = render_error(TMPL_MISTRAL_V01, SYS_USER_ASST_USER, 4, LLMOPT_EINVAL);
    assert_non_null(strstr(msg, "Conversation roles must alternate"));
    assert_non_null(strstr(msg, "line 1, column"));
}

static void test_mistral_v03_puts_the_system_message_in_the_last_user_turn(void **state) {
    (void)state;
    check_render(TMPL_MISTRAL_V03, SYS_USER_ASST_USER, 4, 0, WANT_MISTRAL_V03_NOGEN);
    check_render(TMPL_MISTRAL_V03, SYS_USER_ASST_USER, 4, 1, WANT_MISTRAL_V03_GEN);
}

static void test_gemma_renames_assistant_to_model_and_trims_content(void **state) {
    (void)state;
    check_render(TMPL_GEMMA, USER_ASST_USER, 3, 0, WANT_GEMMA_NOSYS);
    const char *msg = render_error(TMPL_GEMMA, SYS_USER_ASST_USER, 4, LLMOPT_EINVAL);
    assert_non_null(strstr(msg, "System role not supported"));
}

static void test_gemma3_style_prefixes_the_system_message_to_the_first_user_turn(void **state) {
    (void)state;
    check_render(TMPL_GEMMA3_TEXT, SYS_USER_ASST_USER, 4, 0, WANT_GEMMA3_TEXT_NOGEN);
    check_render(TMPL_GEMMA3_TEXT, SYS_USER_ASST_USER, 4, 1, WANT_GEMMA3_TEXT_GEN);
}

static void test_set_inside_a_loop_does_not_leak_out_of_it(void **state) {
    (void)state;
    check_render("{% set c = 'out' %}{% for m in messages %}{% set c = m.role %}{{ c }},{% endfor %}{{ c }}",
                 USER_ASST_USER, 3, 0, "user,assistant,user,out");
    check_render("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
                 USER_ASST_USER, 3, 0, "3");
}

static void test_empty_conversation_and_undefined_names_render_empty(void **state) {
    (void)state;
    check_render("[{{ nothing }}{% for m in messages %}x{% endfor %}{{ messages|length }}]", NULL, 0, 0, "[0]");
}

static void test_unterminated_tag_is_a_format_error_with_its_position(void **state) {
    (void)state;
    const char *msg = render_error("ab\n{% if add_generation_prompt ", NULL, 0, LLMOPT_EFORMAT);
    assert_non_null(strstr(msg, "unterminated '{%' tag"));
    assert_non_null(strstr(msg, "line 2, column 1"));
    msg = render_error("{{ 'x' }", NULL, 0, LLMOPT_EFORMAT);
    assert_non_null(strstr(msg, "unterminated '{{' tag"));
}

static void test_missing_endif_names_the_open_block(void **state) {
    (void)state;
    const char *msg = render_error("{% for m in messages %}{% if 1 %}{% endfor %}", NULL, 0, LLMOPT_EFORMAT);
    assert_non_null(strstr(msg, "unexpected 'endfor'"));
    msg = render_error("x{% if 1 %}y", NULL, 0, LLMOPT_EFORMAT);
    assert_non_null(strstr(msg, "'if' block has no '{% endif %}'"));
    assert_non_null(strstr(msg, "column 5"));
}

static void test_unknown_filter_is_unsupported_and_named(void **state) {
    (void)state;
    const char *msg = render_error("{{ messages | frobnicate }}", NULL, 0, LLMOPT_EUNSUPPORTED);
    assert_non_null(strstr(msg, "'frobnicate' filter"));
    assert_non_null(strstr(msg, "line 1, column 15"));
}

static void test_unsupported_statements_and_functions_are_named(void **state) {
    (void)state;
    assert_non_null(strstr(render_error("{% macro f() %}{% endmacro %}", NULL, 0, LLMOPT_EUNSUPPORTED), "'macro' statement"));
    assert_non_null(strstr(render_error("{{ cycler('a') }}", NULL, 0, LLMOPT_EUNSUPPORTED), "'cycler'"));
    assert_non_null(strstr(render_error("{{ 1.5 }}", NULL, 0, LLMOPT_EUNSUPPORTED), "float"));
    assert_non_null(strstr(render_error("{{ 'a'.split() }}", NULL, 0, LLMOPT_EUNSUPPORTED), "method 'split'"));
}

/* transformers' strftime_now: the local date and time through the C library's format codes;
 * it and the other functions are defined names (Llama 3.1's template tests that). */
static void test_strftime_now_formats_the_local_time(void **state) {
    (void)state;
    char want[64], out[64];
    for (int tries = 0; tries < 2; tries++) { /* a second try if the date turned between the calls */
        time_t now = time(NULL);
        struct tm tm;
        assert_non_null(localtime_r(&now, &tm));
        strftime(want, sizeof want, "%Y-%m-%d %b|True|True|False", &tm);
        char *got = NULL;
        llmopt_error err = {0};
        assert_int_equal(chat_render("{{ strftime_now('%Y-%m-%d %b') }}|{{ strftime_now is defined }}|"
                                     "{{ raise_exception is defined }}|{{ nothing is defined }}",
                                     NULL, 0, NULL, NULL, 0, &got, NULL, &err), 0);
        snprintf(out, sizeof out, "%s", got);
        free(got);
        if (strcmp(out, want) == 0) break;
    }
    assert_string_equal(out, want);
    assert_non_null(strstr(render_error("{{ strftime_now(3) }}", NULL, 0, LLMOPT_EINVAL), "strftime_now needs a string"));
    check_render("{{ strftime_now('') }}|", NULL, 0, 0, "|");
}

static void test_raise_exception_text_surfaces_in_the_error(void **state) {
    (void)state;
    const char *msg = render_error("{% if messages|length < 2 %}{{ raise_exception('need ' ~ 2 ~ ' messages') }}{% endif %}",
                                   USER_ASST_USER, 1, LLMOPT_EINVAL);
    assert_non_null(strstr(msg, "raise_exception: need 2 messages"));
}

static void test_type_errors_are_errors_not_crashes(void **state) {
    (void)state;
    assert_non_null(strstr(render_error("{{ 'a' + 1 }}", NULL, 0, LLMOPT_EINVAL), "unsupported operand types for +"));
    assert_non_null(strstr(render_error("{{ messages[0].role }}", NULL, 0, LLMOPT_EINVAL), "undefined"));
    assert_non_null(strstr(render_error("{{ 1 // 0 }}", NULL, 0, LLMOPT_EINVAL), "by zero"));
}

static void test_runaway_loops_stop_at_the_step_bound(void **state) {
    (void)state;
    /* quadratic in a long conversation: 4000^2 iterations, past the 10^7 step bound */
    size_t n = 4000;
    chat_message *msgs = malloc(n * sizeof *msgs);
    for (size_t i = 0; i < n; i++) msgs[i] = (chat_message){"user", "x"};
    const char *msg = render_error("{% for a in messages %}{% for b in messages %}{% endfor %}{% endfor %}", msgs, n,
                                   LLMOPT_EFAIL);
    assert_non_null(strstr(msg, "steps"));
    free(msgs);
}

static void test_exponential_strings_stop_at_the_memory_bound(void **state) {
    (void)state;
    const char *msg = render_error("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                                   "{% endfor %}{{ ns.s|length }}",
                                   NULL, 0, LLMOPT_EFAIL);
    assert_non_null(strstr(msg, "memory"));
}

static void test_deep_nesting_is_refused_not_a_stack_overflow(void **state) {
    (void)state;
    size_t n = 100000;
    char *t = malloc(2 * n + 16);
    strcpy(t, "{{ ");
    size_t k = 3;
    for (size_t i = 0; i < n / 2; i++) t[k++] = '(';
    strcpy(t + k, " }}");
    assert_non_null(strstr(render_error(t, NULL, 0, LLMOPT_EUNSUPPORTED), "nesting deeper"));
    /* a long flat chain parses without recursion; evaluation is bounded too */
    strcpy(t, "{{ 1");
    k = 4;
    for (size_t i = 0; i < n / 2 - 4; i++) {
        t[k++] = '+';
        t[k++] = '1';
    }
    strcpy(t + k, " }}");
    assert_non_null(strstr(render_error(t, NULL, 0, LLMOPT_EUNSUPPORTED), "nested deeper"));
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chatml_renders_as_transformers),
        cmocka_unit_test(test_llama2_folds_the_system_message_into_the_first_turn),
        cmocka_unit_test(test_llama2_rejects_non_alternating_roles_with_the_templates_message),
        cmocka_unit_test(test_zephyr_keeps_the_newlines_after_expressions_and_trims_after_blocks),
        cmocka_unit_test(test_mistral_v01_renders_user_assistant_turns),
        cmocka_unit_test(test_mistral_v01_raises_on_a_system_message),
        cmocka_unit_test(test_mistral_v03_puts_the_system_message_in_the_last_user_turn),
        cmocka_unit_test(test_gemma_renames_assistant_to_model_and_trims_content),
        cmocka_unit_test(test_gemma3_style_prefixes_the_system_message_to_the_first_user_turn),
        cmocka_unit_test(test_set_inside_a_loop_does_not_leak_out_of_it),
        cmocka_unit_test(test_empty_conversation_and_undefined_names_render_empty),
        cmocka_unit_test(test_unterminated_tag_is_a_format_error_with_its_position),
        cmocka_unit_test(test_missing_endif_names_the_open_block),
        cmocka_unit_test(test_unknown_filter_is_unsupported_and_named),
        cmocka_unit_test(test_unsupported_statements_and_functions_are_named),
        cmocka_unit_test(test_raise_exception_text_surfaces_in_the_error),
        cmocka_unit_test(test_type_errors_are_errors_not_crashes),
        cmocka_unit_test(test_strftime_now_formats_the_local_time),
        cmocka_unit_test(test_runaway_loops_stop_at_the_step_bound),
        cmocka_unit_test(test_exponential_strings_stop_at_the_memory_bound),
        cmocka_unit_test(test_deep_nesting_is_refused_not_a_stack_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
