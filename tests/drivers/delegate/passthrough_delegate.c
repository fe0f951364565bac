/* A minimal LiteRT external delegate for tests: it claims no operators (the model runs
 * on LiteRT's own CPU kernels), records its options and calls in the file named by the
 * "log" option, and refuses to start with the vendor-style message given in "refuse". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct TfLiteDelegate {
    void *data_;
    int (*Prepare)(void *context, struct TfLiteDelegate *delegate);
    void *CopyFromBufferHandle;
    void *CopyToBufferHandle;
    void *FreeBufferHandle;
    int64_t flags;
    void *opaque_delegate_builder;
} TfLiteDelegate;

static void note(const char *log, const char *what) {
    FILE *f;
    if (log == NULL || (f = fopen(log, "a")) == NULL) return;
    fprintf(f, "%s\n", what);
    fclose(f);
}

static int prepare(void *context, TfLiteDelegate *delegate) {
    (void)context;
    note((const char *)delegate->data_, "prepare");
    return 0; /* kTfLiteOk: no node is replaced */
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t count,
                                              void (*report_error)(const char *)) {
    const char *log = NULL;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(keys[i], "refuse") == 0) {
            report_error(values[i]);
            return NULL;
        }
        if (strcmp(keys[i], "log") == 0) log = values[i];
    }
    TfLiteDelegate *delegate = calloc(1, sizeof *delegate);
    if (delegate == NULL) return NULL;
    delegate->data_ = log ? strdup(log) : NULL;
    delegate->Prepare = prepare;
    note(log, "create");
    return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) {
    if (delegate == NULL) return;
    note((const char *)delegate->data_, "destroy");
    free(delegate->data_);
    free(delegate);
}
