/*
 * One posix_spawn per call, with the GIL released around the system calls.
 *
 * The ctypes path in libc_spawn.py makes the same calls from Python: a
 * pipe, its flags, the file actions, a ctypes argv array, posix_spawn.  Per
 * task that Python work is a large share of the daemon's own CPU.  Here it
 * is one C call, and the GIL is released for everything after the strings
 * are encoded, so the reactor runs while the child starts.
 *
 *   Spawner(default_signals, stdin_fd, envp)
 *       What is the same for every child: the spawn attributes (a process
 *       group of its own, default handlers for default_signals, an empty
 *       signal mask), the descriptor the children read as stdin, and the
 *       environment (a sequence of b"NAME=value").
 *   Spawner.command(executable, argv, envp=None) -> Command
 *       The strings of one child, encoded and checked (ValueError for a NUL
 *       byte) in the caller's thread, before anything is started.
 *   Spawner.spawn(command) -> (pid, error, read_fd)
 *       Starts it with stdout and stderr on a new pipe: error is 0 or an
 *       errno; read_fd is the pipe's reading end (non-blocking,
 *       close-on-exec), or -1 on error, when no descriptor is left open.
 *       Safe to call from several threads at once.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

/*
 * A NULL-terminated array of C strings and the bytes objects it points
 * into: the pointers are good for as long as the tuple lives.
 */
typedef struct {
    PyObject *keep; /* tuple of bytes */
    char **strings; /* PyMem block, len(keep) + 1 entries */
} StringArray;

static void
string_array_clear(StringArray *array)
{
    Py_CLEAR(array->keep);
    PyMem_Free(array->strings);
    array->strings = NULL;
}

/*
 * Encode each item of sequence (str or bytes) as the file system does.
 * PyUnicode_FSConverter raises ValueError("embedded null byte") for a NUL,
 * which a C string would silently end at.  Returns 0, or -1 with an
 * exception set and nothing held.
 */
static int
string_array_fill(StringArray *array, PyObject *sequence)
{
    PyObject *items = PySequence_Fast(sequence, "argv and envp must be sequences");
    if (items == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    array->keep = PyTuple_New(n);
    array->strings = PyMem_New(char *, n + 1);
    if (array->keep == NULL || array->strings == NULL) {
        Py_DECREF(items);
        string_array_clear(array);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *encoded = NULL;
        if (!PyUnicode_FSConverter(PySequence_Fast_GET_ITEM(items, i), &encoded)) {
            Py_DECREF(items);
            string_array_clear(array);
            return -1;
        }
        /* The tuple takes the reference. */
        PyTuple_SET_ITEM(array->keep, i, encoded);
        array->strings[i] = PyBytes_AS_STRING(encoded);
    }
    array->strings[n] = NULL;
    Py_DECREF(items);
    return 0;
}

/* Command: one child's strings, ready for posix_spawn. */

typedef struct {
    PyObject_HEAD
    PyObject *executable; /* bytes */
    StringArray argv;
    StringArray envp; /* strings NULL: the spawner's environment */
} CommandObject;

static void
Command_dealloc(CommandObject *self)
{
    Py_CLEAR(self->executable);
    string_array_clear(&self->argv);
    string_array_clear(&self->envp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CommandType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "goophry_tx.process._cspawn.Command",
    .tp_doc = PyDoc_STR("One child's executable, argv and environment, encoded."),
    .tp_basicsize = sizeof(CommandObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Command_dealloc,
    /* Made only by Spawner.command. */
    .tp_new = NULL,
};

/* Spawner: what every child shares. */

typedef struct {
    PyObject_HEAD
    posix_spawnattr_t attr;
    int attr_ready; /* attr was initialised: destroy it */
    int stdin_fd;
    StringArray envp;
} SpawnerObject;

static void
Spawner_dealloc(SpawnerObject *self)
{
    if (self->attr_ready) {
        posix_spawnattr_destroy(&self->attr);
    }
    string_array_clear(&self->envp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The attributes: returns 0, or an errno from the posix_spawnattr calls. */
static int
set_attributes(posix_spawnattr_t *attr, const sigset_t *sigdef)
{
    sigset_t empty;
    int error;

    if (sigemptyset(&empty) != 0) {
        return errno;
    }
    if ((error = posix_spawnattr_setsigdefault(attr, sigdef)) != 0 ||
        (error = posix_spawnattr_setsigmask(attr, &empty)) != 0 ||
        /* Group 0: the child leads a new group, so a timeout can kill its
           whole tree and Ctrl-C on a foreground daemon misses it. */
        (error = posix_spawnattr_setpgroup(attr, 0)) != 0 ||
        (error = posix_spawnattr_setflags(
             attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)) != 0) {
        return error;
    }
    return 0;
}

static PyObject *
Spawner_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"default_signals", "stdin_fd", "envp", NULL};
    PyObject *signals, *envp;
    int stdin_fd;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OiO:Spawner", keywords, &signals, &stdin_fd,
                                     &envp)) {
        return NULL;
    }

    sigset_t sigdef;
    if (sigemptyset(&sigdef) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *numbers = PySequence_Fast(signals, "default_signals must be a sequence");
    if (numbers == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(numbers); i++) {
        long number = PyLong_AsLong(PySequence_Fast_GET_ITEM(numbers, i));
        if (number == -1 && PyErr_Occurred()) {
            Py_DECREF(numbers);
            return NULL;
        }
        /* sigaddset says EINVAL for a number out of range (an int's too). */
        if (number < 1 || number > INT_MAX || sigaddset(&sigdef, (int)number) != 0) {
            errno = EINVAL;
            Py_DECREF(numbers);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    Py_DECREF(numbers);

    SpawnerObject *self = (SpawnerObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* From here on, dealloc releases whatever was made. */
    self->stdin_fd = stdin_fd;
    if (string_array_fill(&self->envp, envp) != 0) {
        Py_DECREF(self);
        return NULL;
    }
    int error = posix_spawnattr_init(&self->attr);
    if (error == 0) {
        self->attr_ready = 1;
        error = set_attributes(&self->attr, &sigdef);
    }
    if (error != 0) {
        errno = error;
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)self;
}

static PyObject *
Spawner_command(SpawnerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"executable", "argv", "envp", NULL};
    PyObject *executable, *argv, *envp = Py_None;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|O:command", keywords, &executable, &argv,
                                     &envp)) {
        return NULL;
    }
    CommandObject *command = PyObject_New(CommandObject, &CommandType);
    if (command == NULL) {
        return NULL;
    }
    command->executable = NULL;
    command->argv = (StringArray){NULL, NULL};
    command->envp = (StringArray){NULL, NULL};
    /* Every string is checked before the command exists: a NUL byte raises
       here, in the caller's thread, never in a spawning thread. */
    if (!PyUnicode_FSConverter(executable, &command->executable) ||
        string_array_fill(&command->argv, argv) != 0 ||
        (envp != Py_None && string_array_fill(&command->envp, envp) != 0)) {
        Py_DECREF(command);
        return NULL;
    }
    return (PyObject *)command;
}

/*
 * The system calls of one spawn; runs without the GIL.  Returns 0 with
 * *pid and *read_fd set, or an errno with no descriptor left open.
 */
static int
spawn_child(SpawnerObject *self, const char *executable, char *const argv[], char *const envp[],
            pid_t *pid, int *read_fd)
{
    int fds[2];
    posix_spawn_file_actions_t actions;
    int error;

    if (pipe2(fds, O_CLOEXEC) != 0) {
        return errno;
    }
    /* Non-blocking on the reading end only: the child's end (the same open
       file, dup'd) must block as any stdout does. */
    int flags = fcntl(fds[0], F_GETFL);
    if (flags == -1 || fcntl(fds[0], F_SETFL, flags | O_NONBLOCK) == -1) {
        error = errno;
        close(fds[0]);
        close(fds[1]);
        return error;
    }
    error = posix_spawn_file_actions_init(&actions);
    if (error == 0) {
        if ((error = posix_spawn_file_actions_adddup2(&actions, self->stdin_fd, 0)) == 0 &&
            (error = posix_spawn_file_actions_adddup2(&actions, fds[1], 1)) == 0 &&
            (error = posix_spawn_file_actions_adddup2(&actions, fds[1], 2)) == 0) {
            error = posix_spawn(pid, executable, &actions, &self->attr, argv, envp);
        }
        posix_spawn_file_actions_destroy(&actions);
    }
    /* The child has its copy (or there is no child). */
    close(fds[1]);
    if (error != 0) {
        close(fds[0]);
        return error;
    }
    *read_fd = fds[0];
    return 0;
}

static PyObject *
Spawner_spawn(SpawnerObject *self, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &CommandType)) {
        PyErr_SetString(PyExc_TypeError, "spawn() takes a Command from Spawner.command()");
        return NULL;
    }
    CommandObject *command = (CommandObject *)arg;
    const char *executable = PyBytes_AS_STRING(command->executable);
    char *const *argv = command->argv.strings;
    char *const *envp = command->envp.strings ? command->envp.strings : self->envp.strings;
    pid_t pid = 0;
    int read_fd = -1;
    int error;

    /* The caller's reference keeps command, and with it the strings, alive
       while the GIL is released. */
    Py_BEGIN_ALLOW_THREADS
    error = spawn_child(self, executable, argv, envp, &pid, &read_fd);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(iii)", error ? 0 : (int)pid, error, read_fd);
}

static PyMethodDef Spawner_methods[] = {
    {"command", (PyCFunction)(void (*)(void))Spawner_command, METH_VARARGS | METH_KEYWORDS,
     PyDoc_STR("command(executable, argv, envp=None) -> Command: one child's strings, checked.")},
    {"spawn", (PyCFunction)Spawner_spawn, METH_O,
     PyDoc_STR("spawn(command) -> (pid, error, read_fd): start it, outside the GIL.")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SpawnerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "goophry_tx.process._cspawn.Spawner",
    .tp_doc = PyDoc_STR("Spawner(default_signals, stdin_fd, envp): posix_spawn set up once."),
    .tp_basicsize = sizeof(SpawnerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Spawner_new,
    .tp_dealloc = (destructor)Spawner_dealloc,
    .tp_methods = Spawner_methods,
};

static struct PyModuleDef cspawn_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "goophry_tx.process._cspawn",
    .m_doc = PyDoc_STR("posix_spawn with one pipe, one call per child, outside the GIL."),
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__cspawn(void)
{
    if (PyType_Ready(&CommandType) < 0 || PyType_Ready(&SpawnerType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&cspawn_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Command", (PyObject *)&CommandType) < 0 ||
        PyModule_AddObjectRef(module, "Spawner", (PyObject *)&SpawnerType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
