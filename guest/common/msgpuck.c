/* msgpuck is header-only but for a few tables and functions, which this file emits (see msgpuck.h). */
#define MP_SOURCE 1
#include <msgpuck.h>
