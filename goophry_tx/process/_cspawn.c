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
 *   Pool(spawner, threads)
 *       Threads of its own that spawn commands without ever taking the
 *       GIL.  Python threads calling Spawner.spawn would each take the GIL
 *       to get a job and again to hand back its result: with the reactor's
 *       thread releasing it at every system call, that is a handover (a
 *       futex and two context switches) several times per child.  Here the
 *       GIL is taken only by the caller: submit() queues a command,
 *       fileno() is an eventfd that becomes readable when results wait,
 *       and collect() takes them all at once.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
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

/* Pool: spawning threads that never take the GIL. */

/*
 * One command on its way.  The references (command, token) are taken and
 * released by the caller's thread, under the GIL; the threads only read
 * the command's strings, which cannot change while it is referenced.
 */
typedef struct Job {
    struct Job *next;
    CommandObject *command;
    PyObject *token;
    pid_t pid;
    int error;
    int read_fd;
} Job;

/* A queue of jobs, first in first out. */
typedef struct {
    Job *head;
    Job *tail;
} JobQueue;

static void
job_queue_push(JobQueue *queue, Job *job)
{
    job->next = NULL;
    if (queue->tail != NULL) {
        queue->tail->next = job;
    } else {
        queue->head = job;
    }
    queue->tail = job;
}

static Job *
job_queue_pop(JobQueue *queue)
{
    Job *job = queue->head;
    if (job != NULL) {
        queue->head = job->next;
        if (queue->head == NULL) {
            queue->tail = NULL;
        }
    }
    return job;
}

typedef struct {
    PyObject_HEAD
    SpawnerObject *spawner;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int sync_ready; /* lock and wake were initialised: destroy them */
    JobQueue waiting; /* submitted, not started: under lock */
    JobQueue done;    /* spawned (or failed), not collected: under lock */
    int signalled;    /* the eventfd was written since the last collect: under lock */
    int stopping;     /* close() was called: under lock */
    int event_fd;
    pthread_t *threads;
    int started; /* threads running, to join */
} PoolObject;

static void *
pool_work(void *arg)
{
    PoolObject *pool = (PoolObject *)arg;
    sigset_t all;

    /* Signals are for the main thread, where Python handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->waiting.head == NULL && !pool->stopping) {
            pthread_cond_wait(&pool->wake, &pool->lock);
        }
        if (pool->stopping) {
            break;
        }
        Job *job = job_queue_pop(&pool->waiting);
        pthread_mutex_unlock(&pool->lock);

        CommandObject *command = job->command;
        char *const *envp =
            command->envp.strings ? command->envp.strings : pool->spawner->envp.strings;
        job->read_fd = -1;
        job->pid = 0;
        job->error = spawn_child(pool->spawner, PyBytes_AS_STRING(command->executable),
                                 command->argv.strings, envp, &job->pid, &job->read_fd);

        pthread_mutex_lock(&pool->lock);
        job_queue_push(&pool->done, job);
        if (!pool->signalled) {
            /* Once per batch: collect() takes every result there is. */
            uint64_t one = 1;
            pool->signalled = 1;
            if (write(pool->event_fd, &one, sizeof(one)) != sizeof(one)) {
                /* Only EAGAIN (the counter is full) can happen here, and
                   then the eventfd is readable already. */
            }
        }
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

/* Release a job's references and close what it opened; needs the GIL. */
static void
job_discard(Job *job)
{
    if (job->read_fd >= 0) {
        close(job->read_fd);
    }
    Py_XDECREF(job->command);
    Py_XDECREF(job->token);
    PyMem_RawFree(job);
}

/* Stop and join the threads, then drop what was not collected; needs the GIL. */
static void
pool_stop(PoolObject *self)
{
    if (self->sync_ready) {
        pthread_mutex_lock(&self->lock);
        self->stopping = 1;
        pthread_cond_broadcast(&self->wake);
        pthread_mutex_unlock(&self->lock);
    }
    if (self->started > 0) {
        /* A thread in posix_spawn finishes it first: wait without the GIL. */
        Py_BEGIN_ALLOW_THREADS
        for (int i = 0; i < self->started; i++) {
            pthread_join(self->threads[i], NULL);
        }
        Py_END_ALLOW_THREADS
        self->started = 0;
    }
    Job *job;
    while ((job = job_queue_pop(&self->waiting)) != NULL) {
        job_discard(job);
    }
    while ((job = job_queue_pop(&self->done)) != NULL) {
        /* A child started but never collected: nobody reads its output. */
        job_discard(job);
    }
    if (self->event_fd >= 0) {
        close(self->event_fd);
        self->event_fd = -1;
    }
}

static void
Pool_dealloc(PoolObject *self)
{
    pool_stop(self);
    if (self->sync_ready) {
        pthread_mutex_destroy(&self->lock);
        pthread_cond_destroy(&self->wake);
    }
    PyMem_Free(self->threads);
    Py_CLEAR(self->spawner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}


static PyObject *
Pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"spawner", "threads", NULL};
    PyObject *spawner;
    int threads;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!i:Pool", keywords, &SpawnerType, &spawner,
                                     &threads)) {
        return NULL;
    }
    if (threads < 1 || threads > 64) {
        PyErr_SetString(PyExc_ValueError, "threads must be from 1 to 64");
        return NULL;
    }
    PoolObject *self = (PoolObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    /* From here on, dealloc releases whatever was made. */
    self->event_fd = -1;
    Py_INCREF(spawner);
    self->spawner = (SpawnerObject *)spawner;
    self->threads = PyMem_New(pthread_t, threads);
    if (self->threads == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->event_fd < 0) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int error = pthread_mutex_init(&self->lock, NULL);
    if (error == 0) {
        error = pthread_cond_init(&self->wake, NULL);
        if (error == 0) {
            self->sync_ready = 1;
        } else {
            pthread_mutex_destroy(&self->lock);
        }
    }
    for (int i = 0; error == 0 && i < threads; i++) {
        error = pthread_create(&self->threads[i], NULL, pool_work, self);
        if (error == 0) {
            self->started++;
        }
    }
    if (error != 0) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *
Pool_submit(PoolObject *self, PyObject *args)
{
    PyObject *command, *token;

    if (!PyArg_ParseTuple(args, "O!O:submit", &CommandType, &command, &token)) {
        return NULL;
    }
    Job *job = PyMem_RawMalloc(sizeof(Job));
    if (job == NULL) {
        return PyErr_NoMemory();
    }
    Py_INCREF(command);
    Py_INCREF(token);
    job->command = (CommandObject *)command;
    job->token = token;
    job->read_fd = -1;

    pthread_mutex_lock(&self->lock);
    int stopping = self->stopping;
    if (!stopping) {
        job_queue_push(&self->waiting, job);
        pthread_cond_signal(&self->wake);
    }
    pthread_mutex_unlock(&self->lock);
    if (stopping) {
        job_discard(job);
        PyErr_SetString(PyExc_RuntimeError, "the pool is closed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Pool_collect(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t count;

    if (self->event_fd >= 0 && read(self->event_fd, &count, sizeof(count)) < 0 &&
        errno != EAGAIN) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_lock(&self->lock);
    Job *job = self->done.head;
    self->done.head = self->done.tail = NULL;
    /* Reset with the queue taken: a result from now on writes again. */
    self->signalled = 0;
    pthread_mutex_unlock(&self->lock);

    PyObject *results = PyList_New(0);
    if (results == NULL) {
        /* The jobs stay referenced by nobody: close and release them. */
        while (job != NULL) {
            Job *next = job->next;
            job_discard(job);
            job = next;
        }
        return NULL;
    }
    while (job != NULL) {
        Job *next = job->next;
        PyObject *item = Py_BuildValue("(Oiii)", job->token, job->error ? 0 : (int)job->pid,
                                       job->error, job->read_fd);
        if (item == NULL || PyList_Append(results, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(results);
            while (job != NULL) {
                next = job->next;
                job_discard(job);
                job = next;
            }
            return NULL;
        }
        Py_DECREF(item);
        /* The descriptor is the caller's now. */
        job->read_fd = -1;
        job_discard(job);
        job = next;
    }
    return results;
}

static PyObject *
Pool_fileno(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->event_fd);
}

static PyObject *
Pool_close(PoolObject *self, PyObject *Py_UNUSED(ignored))
{
    pool_stop(self);
    Py_RETURN_NONE;
}

static PyMethodDef Pool_methods[] = {
    {"submit", (PyCFunction)Pool_submit, METH_VARARGS,
     PyDoc_STR("submit(command, token): start command on a thread; collect() gives token back.")},
    {"collect", (PyCFunction)Pool_collect, METH_NOARGS,
     PyDoc_STR("collect() -> [(token, pid, error, read_fd)]: the results so far, in order.")},
    {"fileno", (PyCFunction)Pool_fileno, METH_NOARGS,
     PyDoc_STR("fileno() -> int: an eventfd, readable when results wait.")},
    {"close", (PyCFunction)Pool_close, METH_NOARGS,
     PyDoc_STR("close(): end the threads; what was not collected is dropped.")},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "goophry_tx.process._cspawn.Pool",
    .tp_doc = PyDoc_STR("Pool(spawner, threads): spawning threads that never take the GIL."),
    .tp_basicsize = sizeof(PoolObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Pool_new,
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_methods = Pool_methods,
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
    if (PyType_Ready(&CommandType) < 0 || PyType_Ready(&SpawnerType) < 0 ||
        PyType_Ready(&PoolType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&cspawn_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Command", (PyObject *)&CommandType) < 0 ||
        PyModule_AddObjectRef(module, "Spawner", (PyObject *)&SpawnerType) < 0 ||
        PyModule_AddObjectRef(module, "Pool", (PyObject *)&PoolType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
