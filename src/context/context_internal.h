/* Context internals shared by the files of src/context/ (never installed). */
#ifndef BRAID_CONTEXT_INTERNAL_H
#define BRAID_CONTEXT_INTERNAL_H

#include "capture.h"

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "context";

#endif
