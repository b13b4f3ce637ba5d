/*
 * evolvm-rt-wasm: the WebAssembly runtime of the evolvm guest (see ../../RUNTIMES.md). One module is
 * loaded into wabt's interpreter and stays instantiated; exports are called with msgpack arguments
 * converted to their wasm types, and the module's imports from "host" call out to the host.
 */
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <msgpuck.h>

#include "wabt/binary-reader.h"
#include "wabt/error-formatter.h"
#include "wabt/interp/binary-reader-interp.h"
#include "wabt/interp/interp.h"

#include "../common/rtchan.h"

/* build.sh passes the version of the wabt source package, e.g. "wabt-1.0.32". */
#ifndef RT_VERSION
#define RT_VERSION "wabt-unknown"
#endif

using namespace wabt;
using namespace wabt::interp;

namespace {

struct Offered {
	std::string name;
	ValueTypes params, results;
};

// The store is declared first so that it outlives the references into it.
Features features;
Store store(features);
Module::Ptr module_;
Instance::Ptr instance;
// The interpreter thread calls run on: kept across calls (its stacks are empty after a call that returned),
// and dropped after a call that failed, which may leave frames on it.
std::unique_ptr<Thread> thread;
bool loaded;
struct mpb out;

// The request being served: host calls made during it carry its id.
uint64_t current_id;
// Set by a host function that failed, so the call reports HOST_ERROR rather than TRAP.
bool host_failed;
std::string host_error;

const char *type_name(ValueType t)
{
	switch (t) {
	case Type::I32: return "i32";
	case Type::I64: return "i64";
	case Type::F32: return "f32";
	case Type::F64: return "f64";
	case Type::V128: return "v128";
	case Type::FuncRef: return "funcref";
	case Type::ExternRef: return "externref";
	default: return "unknown";
	}
}

bool parse_type(const char *v, ValueType *out)
{
	const char *s;
	uint32_t len;
	if (!mp_get_str(v, &s, &len))
		return false;
	std::string name(s, len);
	if (name == "i32") *out = Type::I32;
	else if (name == "i64") *out = Type::I64;
	else if (name == "f32") *out = Type::F32;
	else if (name == "f64") *out = Type::F64;
	else return false;
	return true;
}

bool parse_types(const char *v, ValueTypes *out)
{
	if (!v || mp_typeof(*v) == MP_NIL)
		return true;
	if (mp_typeof(*v) != MP_ARRAY)
		return false;
	uint32_t n = mp_decode_array(&v);
	for (uint32_t i = 0; i < n; i++) {
		ValueType t;
		if (!parse_type(v, &t))
			return false;
		out->push_back(t);
		mp_next(&v);
	}
	return true;
}

std::string signature(const ValueTypes &params, const ValueTypes &results)
{
	std::string s = "(";
	for (size_t i = 0; i < params.size(); i++)
		s += std::string(i ? ", " : "") + type_name(params[i]);
	s += ") -> (";
	for (size_t i = 0; i < results.size(); i++)
		s += std::string(i ? ", " : "") + type_name(results[i]);
	return s + ")";
}

// One msgpack value (at *p, advanced past it) as a value of type t. Integers fit i32 when they are in
// [-2^31, 2^32) and are taken modulo 2^32; floats are refused for integer types.
bool to_value(const char **p, ValueType t, Value *out, std::string *why)
{
	const char *v = *p;
	enum mp_type mt = mp_typeof(*v);
	bool is_int = mt == MP_UINT || mt == MP_INT;
	bool is_float = mt == MP_FLOAT || mt == MP_DOUBLE;
	uint64_t u = 0;
	int64_t i = 0;
	double d = 0;
	if (mt == MP_UINT)
		d = (double)(u = mp_decode_uint(&v));
	else if (mt == MP_INT)
		d = (double)(i = mp_decode_int(&v)), u = (uint64_t)i;
	else if (mt == MP_FLOAT)
		d = mp_decode_float(&v);
	else if (mt == MP_DOUBLE)
		d = mp_decode_double(&v);
	else {
		*why = "is not a number";
		return false;
	}
	*p = v;
	switch (t) {
	case Type::I32:
		if (!is_int) {
			*why = "is a float, not an integer";
			return false;
		}
		if ((mt == MP_UINT && u > UINT32_MAX) || (mt == MP_INT && i < INT32_MIN)) {
			*why = "is out of the i32 range";
			return false;
		}
		*out = Value::Make(static_cast<u32>(u));
		return true;
	case Type::I64:
		if (!is_int) {
			*why = "is a float, not an integer";
			return false;
		}
		*out = Value::Make(static_cast<u64>(u));
		return true;
	case Type::F32:
		*out = Value::Make(static_cast<f32>(d));
		return true;
	case Type::F64:
		*out = Value::Make(static_cast<f64>(d));
		return true;
	default:
		*why = std::string("has type ") + type_name(t) + ", which the host cannot pass";
		(void)is_float;
		return false;
	}
}

void put_value(struct mpb *b, ValueType t, const Value &v)
{
	switch (t) {
	case Type::I32: mpb_int(b, static_cast<int32_t>(v.Get<u32>())); break;
	case Type::I64: mpb_int(b, static_cast<int64_t>(v.Get<u64>())); break;
	case Type::F32: mpb_float(b, v.Get<f32>()); break;
	case Type::F64: mpb_double(b, v.Get<f64>()); break;
	default: mpb_nil(b); break; // v128 and references have no msgpack form
	}
}

// An import from "host": sends a hostcall and blocks until the agent relays the host's answer.
Result call_host(const std::string &name, const FuncType &type, const Values &params, Values &results,
		 Trap::Ptr *trap)
{
	struct mpb b = {};
	uint64_t call = rt_hostcall_begin(&b, current_id, name.c_str());
	mpb_array(&b, static_cast<uint32_t>(params.size()));
	for (size_t i = 0; i < params.size(); i++)
		put_value(&b, type.params[i], params[i]);
	const char *err = nullptr;
	char *ret = rt_hostcall_wait(&b, call, &err);
	free(b.p);
	std::string fail;
	bool ok = false;
	const char *okv = ret ? mp_find(ret, "ok") : nullptr;
	if (okv && mp_typeof(*okv) == MP_BOOL)
		ok = mp_decode_bool(&okv);
	if (!ret) {
		fail = std::string("host function ") + name + ": " + err;
	} else if (ok) {
		const char *v = mp_find(ret, "v");
		std::string why;
		if (type.results.size() == 1) {
			Value r;
			if (v && to_value(&v, type.results[0], &r, &why))
				results[0] = r;
			else
				fail = "host function " + name + " returned a value that " + (v ? why : "is missing");
		} else if (!type.results.empty()) {
			if (v && mp_typeof(*v) == MP_ARRAY && mp_decode_array(&v) == type.results.size()) {
				for (size_t i = 0; i < type.results.size() && fail.empty(); i++) {
					Value r;
					if (to_value(&v, type.results[i], &r, &why))
						results[i] = r;
					else
						fail = "host function " + name + " result " + std::to_string(i) + " " + why;
				}
			} else {
				fail = "host function " + name + " must return an array of " +
				       std::to_string(type.results.size()) + " results";
			}
		}
	} else {
		const char *e = mp_find(ret, "e"), *s;
		uint32_t len;
		std::string code = "HOST_ERROR", msg;
		if (mp_get_str(mp_find(e, "code"), &s, &len))
			code.assign(s, len);
		if (mp_get_str(mp_find(e, "msg"), &s, &len))
			msg.assign(s, std::min<uint32_t>(len, 2048));
		fail = "host function " + name + " failed: " + code + ": " + msg;
	}
	free(ret);
	if (fail.empty())
		return Result::Ok;
	host_failed = true;
	host_error = fail;
	*trap = Trap::New(store, fail);
	return Result::Error;
}

const ExportDesc *find_export(const char *name, uint32_t len, ExternKind kind, Index *pos)
{
	const auto &exports = module_->desc().exports;
	for (Index i = 0; i < exports.size(); i++) {
		const ExportDesc &e = exports[i];
		if (e.type.type->kind == kind && e.type.name.size() == len && memcmp(e.type.name.data(), name, len) == 0) {
			*pos = i;
			return &e;
		}
	}
	return nullptr;
}

void op_load(uint64_t id, const char *a)
{
	if (loaded) {
		rt_res_err(id, "ALREADY_LOADED", "a module is already loaded (devolve to swap code)");
		return;
	}
	const char *code;
	uint32_t code_len;
	if (!mp_get_bin(mp_find(a, "code"), &code, &code_len)) {
		rt_res_err(id, "BAD_REQUEST", "load: code must be bin");
		return;
	}
	std::vector<Offered> offered;
	const char *imp = mp_find(a, "imports");
	if (imp && mp_typeof(*imp) != MP_NIL) {
		if (mp_typeof(*imp) != MP_ARRAY) {
			rt_res_err(id, "BAD_REQUEST", "load: imports must be an array");
			return;
		}
		uint32_t n = mp_decode_array(&imp);
		for (uint32_t i = 0; i < n; i++, mp_next(&imp)) {
			Offered o;
			const char *s;
			uint32_t len;
			if (!mp_get_str(mp_find(imp, "name"), &s, &len) || !parse_types(mp_find(imp, "params"), &o.params) ||
			    !parse_types(mp_find(imp, "results"), &o.results)) {
				rt_res_err(id, "BAD_REQUEST", "load: imports[%u] needs a name and i32/i64/f32/f64 types", i);
				return;
			}
			o.name.assign(s, len);
			offered.push_back(std::move(o));
		}
	}

	Errors errors;
	ModuleDesc desc;
	ReadBinaryOptions options(features, nullptr, false, true, false);
	if (Failed(ReadBinaryInterp("module.wasm", code, code_len, options, &errors, &desc))) {
		std::string msg = FormatErrorsToString(errors, Location::Type::Binary);
		while (!msg.empty() && msg.back() == '\n')
			msg.pop_back();
		rt_res_err(id, "INVALID_CODE", "%s", msg.empty() ? "the module does not validate" : msg.c_str());
		return;
	}
	Module::Ptr mod = Module::New(store, desc);

	RefVec imports;
	for (const ImportDesc &import : mod->desc().imports) {
		const ImportType &it = import.type;
		if (it.module != "host" || it.type->kind != ExternKind::Func) {
			rt_res_err(id, "IMPORT_MISSING", "the module imports %s.%s (%s); only functions from \"host\" can be imported",
				   it.module.c_str(), it.name.c_str(), GetName(it.type->kind));
			return;
		}
		const FuncType &want = *cast<FuncType>(it.type.get());
		const Offered *o = nullptr;
		for (const Offered &c : offered)
			if (c.name == it.name)
				o = &c;
		if (!o) {
			rt_res_err(id, "IMPORT_MISSING", "the module imports host.%s, which the host does not offer", it.name.c_str());
			return;
		}
		if (o->params != want.params || o->results != want.results) {
			rt_res_err(id, "IMPORT_MISSING", "the module imports host.%s as %s, but the host offers %s", it.name.c_str(),
				   signature(want.params, want.results).c_str(), signature(o->params, o->results).c_str());
			return;
		}
		std::string name = it.name;
		FuncType type = want;
		HostFunc::Ptr f = HostFunc::New(store, want, [name, type](Thread &, const Values &params, Values &results, Trap::Ptr *trap) {
			return call_host(name, type, params, results, trap);
		});
		imports.push_back(f.ref());
	}

	current_id = id;
	host_failed = false;
	Trap::Ptr trap;
	Instance::Ptr inst = Instance::Instantiate(store, mod.ref(), imports, &trap);
	if (!inst) {
		std::string msg = host_failed ? host_error : trap ? trap->message() : "instantiation failed";
		rt_res_err(id, "START_TRAP", "%s", msg.c_str());
		return;
	}
	module_ = mod;
	instance = inst;
	loaded = true;

	uint32_t nfuncs = 0;
	for (const ExportDesc &e : module_->desc().exports)
		nfuncs += e.type.type->kind == ExternKind::Func;
	rt_res_begin(&out, id);
	mpb_map(&out, 1);
	mpb_str(&out, "exports");
	mpb_array(&out, nfuncs);
	for (const ExportDesc &e : module_->desc().exports) {
		if (e.type.type->kind != ExternKind::Func)
			continue;
		const FuncType &ft = *cast<FuncType>(e.type.type.get());
		mpb_map(&out, 3);
		mpb_str(&out, "name"); mpb_strn(&out, e.type.name.data(), static_cast<uint32_t>(e.type.name.size()));
		mpb_str(&out, "params"); mpb_array(&out, static_cast<uint32_t>(ft.params.size()));
		for (ValueType t : ft.params)
			mpb_str(&out, type_name(t));
		mpb_str(&out, "results"); mpb_array(&out, static_cast<uint32_t>(ft.results.size()));
		for (ValueType t : ft.results)
			mpb_str(&out, type_name(t));
	}
	rt_res_send(&out, id);
}

bool need_loaded(uint64_t id)
{
	if (!loaded)
		rt_res_err(id, "NOT_LOADED", "no module is loaded");
	return loaded;
}

void op_call(uint64_t id, const char *a)
{
	if (!need_loaded(id))
		return;
	const char *fn;
	uint32_t fn_len;
	if (!mp_get_str(mp_find(a, "fn"), &fn, &fn_len)) {
		rt_res_err(id, "BAD_REQUEST", "call: fn must be a string");
		return;
	}
	Index pos;
	if (!find_export(fn, fn_len, ExternKind::Func, &pos)) {
		rt_res_err(id, "NO_EXPORT", "the module exports no function %.*s", (int)std::min<uint32_t>(fn_len, 256), fn);
		return;
	}
	Func::Ptr func = store.UnsafeGet<Func>(instance->exports()[pos]);
	const FuncType &type = func->type();
	const char *args = mp_find(a, "args");
	uint32_t nargs = 0;
	if (args && mp_typeof(*args) == MP_ARRAY)
		nargs = mp_decode_array(&args);
	else if (args && mp_typeof(*args) != MP_NIL) {
		rt_res_err(id, "BAD_ARGS", "call: args must be an array");
		return;
	}
	if (nargs != type.params.size()) {
		rt_res_err(id, "BAD_ARGS", "%.*s takes %zu arguments %s, got %u", (int)std::min<uint32_t>(fn_len, 256), fn,
			   type.params.size(), signature(type.params, type.results).c_str(), nargs);
		return;
	}
	Values params(nargs);
	for (uint32_t i = 0; i < nargs; i++) {
		std::string why;
		if (!to_value(&args, type.params[i], &params[i], &why)) {
			rt_res_err(id, "BAD_ARGS", "argument %u of %.*s (%s) %s", i, (int)std::min<uint32_t>(fn_len, 256), fn,
				   type_name(type.params[i]), why.c_str());
			return;
		}
	}
	Values results;
	Trap::Ptr trap;
	current_id = id;
	host_failed = false;
	if (!thread)
		thread = std::make_unique<Thread>(store);
	if (Failed(func->Call(*thread, params, results, &trap))) {
		thread.reset();
		if (host_failed)
			rt_res_err(id, "HOST_ERROR", "%s", host_error.c_str());
		else
			rt_res_err(id, "TRAP", "%s", trap ? trap->message().c_str() : "the call failed");
		return;
	}
	rt_res_begin(&out, id);
	mpb_map(&out, 1);
	mpb_str(&out, "results");
	mpb_array(&out, static_cast<uint32_t>(results.size()));
	for (size_t i = 0; i < results.size(); i++)
		put_value(&out, type.results[i], results[i]);
	rt_res_send(&out, id);
}

// The module's exported linear memory (the first one it exports), or null after an error reply.
Memory::Ptr exported_memory(uint64_t id)
{
	for (Index i = 0; i < module_->desc().exports.size(); i++)
		if (module_->desc().exports[i].type.type->kind == ExternKind::Memory)
			return store.UnsafeGet<Memory>(instance->exports()[i]);
	rt_res_err(id, "NO_EXPORT", "the module exports no memory");
	return Memory::Ptr();
}

bool get_range(uint64_t id, const char *a, uint64_t len, const Memory::Ptr &mem, uint64_t *ptr)
{
	if (!mp_get_uint(mp_find(a, "ptr"), ptr)) {
		rt_res_err(id, "BAD_REQUEST", "ptr must be an unsigned integer");
		return false;
	}
	uint64_t size = mem->ByteSize();
	if (*ptr > size || len > size - *ptr) {
		rt_res_err(id, "OUT_OF_BOUNDS", "[%" PRIu64 ", %" PRIu64 " + %" PRIu64 ") is outside the %" PRIu64 "-byte memory",
			   *ptr, *ptr, len, size);
		return false;
	}
	return true;
}

void op_mem_read(uint64_t id, const char *a)
{
	if (!need_loaded(id))
		return;
	Memory::Ptr mem = exported_memory(id);
	if (!mem)
		return;
	uint64_t len, ptr;
	if (!mp_get_uint(mp_find(a, "len"), &len)) {
		rt_res_err(id, "BAD_REQUEST", "mem_read: len must be an unsigned integer");
		return;
	}
	if (!get_range(id, a, len, mem, &ptr))
		return;
	if (len > RT_MAX_FRAME - 64) {
		rt_res_err(id, "TOO_LARGE", "mem_read: %" PRIu64 " bytes do not fit in a frame", len);
		return;
	}
	rt_res_begin(&out, id);
	mpb_map(&out, 1);
	mpb_str(&out, "d");
	mpb_bin(&out, mem->UnsafeData() + ptr, static_cast<uint32_t>(len));
	rt_res_send(&out, id);
}

void op_mem_write(uint64_t id, const char *a)
{
	if (!need_loaded(id))
		return;
	Memory::Ptr mem = exported_memory(id);
	if (!mem)
		return;
	const char *d;
	uint32_t len;
	uint64_t ptr;
	if (!mp_get_bin(mp_find(a, "d"), &d, &len)) {
		rt_res_err(id, "BAD_REQUEST", "mem_write: d must be bin");
		return;
	}
	if (!get_range(id, a, len, mem, &ptr))
		return;
	memcpy(mem->UnsafeData() + ptr, d, len);
	rt_res_begin(&out, id);
	mpb_map(&out, 0);
	rt_res_send(&out, id);
}

} // namespace

int main()
{
	rt_init("wasm", RT_VERSION);
	static const struct {
		const char *name;
		void (*fn)(uint64_t, const char *);
	} ops[] = {
		{ "load", op_load },
		{ "call", op_call },
		{ "mem_read", op_mem_read },
		{ "mem_write", op_mem_write },
	};
	for (char *f; (f = rt_recv()); free(f)) {
		uint64_t id;
		if (!mp_str_eq(mp_find(f, "t"), "req") || !mp_get_uint(mp_find(f, "id"), &id)) {
			rt_log("dropping a frame that is not a request");
			continue;
		}
		const char *op, *a = mp_find(f, "a");
		uint32_t op_len;
		if (!mp_get_str(mp_find(f, "op"), &op, &op_len)) {
			rt_res_err(id, "BAD_REQUEST", "op must be a string");
			continue;
		}
		if (!a || mp_typeof(*a) == MP_NIL)
			a = "\x80";
		else if (mp_typeof(*a) != MP_MAP) {
			rt_res_err(id, "BAD_REQUEST", "a must be a map");
			continue;
		}
		bool found = false;
		for (const auto &o : ops) {
			if (strlen(o.name) == op_len && memcmp(o.name, op, op_len) == 0) {
				o.fn(id, a);
				found = true;
				break;
			}
		}
		if (!found)
			rt_res_err(id, "UNKNOWN_OP", "unknown op %.*s", (int)std::min<uint32_t>(op_len, 64), op);
	}
	// EOF: the agent is gone. Skip destructors (the store would be torn down under live references).
	_exit(0);
}
