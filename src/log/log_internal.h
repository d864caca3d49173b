/* Log internals shared by the files of src/log/ (never installed). */
#ifndef BRAID_LOG_INTERNAL_H
#define BRAID_LOG_INTERNAL_H

#include "logger.h"

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "log";

#endif
