package PAGI::App::WrapPSGI;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Future;
use Future::AsyncAwait;
use IO::Handle ();
use overload ();
use Scalar::Util qw(blessed refaddr reftype);

use PAGI::App::WrapPSGI::Errors;
use PAGI::App::WrapPSGI::Writer;

=head1 NAME

PAGI::App::WrapPSGI - run a PSGI application on any PAGI server

=head1 SYNOPSIS

    use PAGI::App::WrapPSGI;

    my $psgi_app = sub { my ($env) = @_; [ 200, [ 'Content-Type' => 'text/plain' ], [ "hi\n" ] ] };
    my $app = PAGI::App::WrapPSGI->new(psgi_app => $psgi_app)->to_app;

    # or from the command line: a .psgi file is wrapped automatically
    #   pagi-server app.psgi

=head1 DESCRIPTION

A PAGI application (PAGI-SPEC section 6) that gives a PSGI 1.1 application
a complete PSGI server environment. It uses nothing but PAGI events, so it
runs on any conforming PAGI server; on L<PAGI::Server> with its event loop.

=head2 Scopes

=over 4

=item C<http>

Each request becomes one call of the PSGI app (see L</ENVIRONMENT>,
L</REQUEST BODY>, L</RESPONSES>).

=item C<sse>

A request the server hands over as an C<sse> scope (its C<Accept> asks for
C<text/event-stream>) is answered through the SSE decline path
(C<sse.http.response.start> / C<sse.http.response.body>, PAGI-SPEC 3.3.2):
the PSGI app sees an ordinary HTTP request, and a PSGI endpoint that
streams C<text/event-stream> itself keeps working. File bodies are read in
Perl there (the decline path carries bytes only).

=item C<lifespan>

Startup and shutdown are completed. The lifespan C<state> hash is what
request scopes carry as C<state> (a shallow copy: the values, such as a
connection pool put there by PAGI code, are shared); the PSGI app finds it
in C<< $env->{'pagi.state'} >>.

=item C<websocket>

PSGI cannot speak WebSocket: the handshake is refused with
C<websocket.close> (HTTP 403).

=back

Any other scope type raises C<Unsupported scope type: TYPE>.

=head1 ENVIRONMENT

Per PSGI 1.1 and PAGI-SPEC 6.1/6.3:

=over 4

=item C<REQUEST_METHOD>, C<SERVER_PROTOCOL> (C<HTTP/> and the scope's C<http_version>)

=item C<SCRIPT_NAME>, C<PATH_INFO>

C<SCRIPT_NAME> is the scope's C<root_path> (never C</>); C<PATH_INFO> is the
rest of the path, URI-unescaped once, as bytes: it is built from
C<raw_path>, so C<%2F> is a C</> byte and C<%E3%81%82> three bytes, never a
character string.

=item C<REQUEST_URI>

The request target as sent: C<raw_path>, then C<?> and the query string if
there is one.

=item C<QUERY_STRING>, C<SERVER_NAME>, C<SERVER_PORT>, C<REMOTE_ADDR>, C<REMOTE_PORT>

From C<query_string>, C<server> and C<client>. Without a C<server> (a Unix
socket), C<SERVER_NAME> and C<SERVER_PORT> come from the C<Host> header, else
C<localhost> and the scheme's port. C<REMOTE_*> are absent when the scope
has no C<client>.

=item C<CONTENT_TYPE>, C<CONTENT_LENGTH>, C<HTTP_*>

Every request header, upper-cased with C<-> as C<_>; repeated headers are
joined with C<", "> (RFC 9110), C<Cookie> with C<"; ">. A chunked request
body is read whole first, so its C<CONTENT_LENGTH> is set to its size and
C<HTTP_TRANSFER_ENCODING> removed.

=item C<psgi.version> C<[1, 1]>, C<psgi.url_scheme>, C<psgi.input>, C<psgi.errors>

C<psgi.errors> is a handle whose every write goes to the server's log
(through C<warn>, one line per write).

=item C<psgi.multithread> 0, C<psgi.run_once> 0, C<psgi.nonblocking> 1, C<psgi.streaming> 1

=item C<psgi.multiprocess>

True in a prefork worker: learned from the lifespan scope's
C<< pagi => { is_worker => 1 } >> (PAGI-SPEC 2.6), or from the request
scope's C<pagi> hash when a server puts it there. Without a lifespan scope
(C<--lifespan off>) it stays 0.

=item C<psgix.input.buffered> 1

=item C<pagi.scope>, C<pagi.state>

The PAGI scope of the request and its C<state> hash (the lifespan state).

=back

=head1 REQUEST BODY

The body is read through C<$receive> before the PSGI app is called (PSGI
reads input synchronously). Up to C<memory_body_limit> bytes it is kept in
memory; past that it is written to an anonymous temporary file (in
C<TMPDIR>), so memory stays bounded whatever the size. C<psgi.input> is a
real filehandle either way: C<read>, C<seek> and C<< $fh->read >> work. The
server's C<max_body_size> applies (a larger body ends the request with 413
before the app runs); C<max_body_size> here adds a limit of its own for
servers that have none. When the client leaves during the body, the PSGI
app is not called.

=head1 RESPONSES

=over 4

=item C<[ $status, \@headers, \@body ]>

Sent as C<http.response.start> and one body event.

=item C<[ $status, \@headers, $fh ]>

A real file (a descriptor on a regular file, no translating I/O layer) is
handed to the server as C<< { fh => $fh } >> from its current position;
anything else with C<getline> (handles, IO::Handle-like objects) is read in
chunks of 64 KiB (C<$/> is C<\65536> during each C<getline>), each chunk
sent and awaited before the next is read, so a slow client holds the
reading back. C<close> is called at the end. Bodies are never slurped.

=item C<sub { my $responder = shift; ... }>

The delayed response. C<$responder> may be called at once or later from the
event loop (an IO::Async timer, a Future, an AnyEvent watcher); the request
stays open until it is. C<< $responder->([$status, \@headers, $body]) >>
sends a whole response; C<< $responder->([$status, \@headers]) >> returns a
writer: C<< $writer->write($bytes) >> sends each chunk as it is written
(chunks written while an earlier one waits on backpressure are joined and
sent next), C<< $writer->close >> ends the response. A writer dropped
without C<close> is closed when it is destroyed.
C<< $writer->poll_cb(sub { my ($writer) = @_; ... }) >> pulls instead: the
callback is called whenever what it wrote before has been accepted (at once
the first time); a call that writes nothing and does not close ends the
polling.

=back

An exception from the PSGI app (or its delayed coderef) before a response
started becomes a C<500> whose error text goes to C<psgi.errors> (and so the
server's log). A response of the wrong shape becomes a C<500> whose body and
log line name the problem (for example
C<PSGI response must be an array reference or a code reference>). A failure
after the response started (a body handle that dies, bytes with wide
characters) fails the PAGI app, so the server logs it and cuts the
connection.

=head1 EVENT LOOPS

Non-blocking PSGI code runs on the server's loop. On L<IO::Async> (as
L<PAGI::Server>) C<< IO::Async::Loop->new >> is that loop, and L<AnyEvent>
is pointed at it: when AnyEvent has not chosen a backend yet,
L<AnyEvent::Impl::IOAsync> is registered as the one to use, and in every
process (each prefork worker has its own loop) it is given the current loop.
So C<< AnyEvent->timer >> and condvar callbacks work inside a
C<psgi.nonblocking> app written for Twiggy. A blocking PSGI app blocks the
loop: use C<--workers>.

=head1 METHODS

=head2 new

    my $wrapper = PAGI::App::WrapPSGI->new(psgi_app => $psgi_app, %options);

Options: C<psgi_app> (required: a code reference, or an object overloading
C<&{}>), C<memory_body_limit> (bytes of request body kept in memory before
spooling to a file, default 65536), C<max_body_size> (answer 413 to larger
bodies; default none, the server's limit applies).

=head2 to_app

Returns the PAGI application (a code reference).

=head2 prepare_event_loop

    PAGI::App::WrapPSGI->prepare_event_loop;

Loads L<IO::Async::Loop> and registers it as AnyEvent's backend (see
L</EVENT LOOPS>), for code that runs a PSGI file before the server made its
loop: C<pagi-server app.psgi> calls it before loading the file.

=cut

my %KNOWN = map { $_ => 1 } qw(psgi_app memory_body_limit max_body_size);

sub new {
    my ($class, %args) = @_;
    for my $key (sort keys %args) {
        Carp::croak("PAGI::App::WrapPSGI->new: unknown option '$key'") unless $KNOWN{$key};
    }
    my $psgi = $args{psgi_app};
    Carp::croak("PAGI::App::WrapPSGI->new: option 'psgi_app' is required") unless defined $psgi;
    Carp::croak("PAGI::App::WrapPSGI->new: option 'psgi_app' must be a code reference")
        unless (reftype($psgi) // '') eq 'CODE' || (blessed $psgi && overload::Method($psgi, '&{}'));
    for my $key (qw(memory_body_limit max_body_size)) {
        next unless defined $args{$key};
        Carp::croak("PAGI::App::WrapPSGI->new: option '$key' must be a non-negative integer")
            if ref $args{$key} || $args{$key} !~ /\A\d+\z/;
    }
    return bless {
        psgi_app          => $psgi,
        memory_body_limit => $args{memory_body_limit} // 65536,
        max_body_size     => $args{max_body_size},
    }, $class;
}

sub to_app {
    my ($self) = @_;
    my $psgi = $self->{psgi_app};
    # Per process: a prefork worker is told it is one by its lifespan scope.
    my %process = (pid => 0, multiprocess => 0, state => undef);
    return sub {
        my ($scope, $receive, $send) = @_;
        my $type = $scope->{type} // '';
        if ($process{pid} != $$) {
            %process = (pid => $$, multiprocess => 0, state => undef);
            _bind_anyevent();
        }
        return _http($self, $psgi, \%process, $scope, $receive, $send, $type) if $type eq 'http' || $type eq 'sse';
        return _lifespan(\%process, $scope, $receive, $send) if $type eq 'lifespan';
        return _websocket($receive, $send) if $type eq 'websocket';
        die "Unsupported scope type: $type\n";
    };
}

# ===== event loops =====

sub prepare_event_loop {
    require IO::Async::Loop;
    _register_anyevent();
    return;
}

# Before AnyEvent picks a backend: IO::Async's, ahead of any other it would
# find loaded (@AnyEvent::REGISTRY is read first and may be filled before
# AnyEvent loads). Its backend takes IO::Async::Loop->new when it loads.
sub _register_anyevent {
    no warnings 'once';
    return if $AnyEvent::MODEL;
    return if grep { $_->[1] eq 'AnyEvent::Impl::IOAsync::' } @AnyEvent::REGISTRY;
    unshift @AnyEvent::REGISTRY, [ 'IO::Async::Loop::' => 'AnyEvent::Impl::IOAsync::' ];
}

my $ANYEVENT_WARNED = 0;

# Once per process: a backend loaded earlier (in a prefork master, or while
# a .psgi file was loaded) is moved to this process's loop.
sub _bind_anyevent {
    no warnings 'once';
    my $loop = $IO::Async::Loop::ONE_TRUE_LOOP or return;
    _register_anyevent();
    if ($INC{'AnyEvent/Impl/IOAsync.pm'}) {
        AnyEvent::Impl::IOAsync::set_loop($loop);
    }
    elsif ($AnyEvent::MODEL && !$ANYEVENT_WARNED++) {
        warn "PAGI::App::WrapPSGI: AnyEvent already uses $AnyEvent::MODEL, not the server's IO::Async loop: "
            . "its watchers may never fire (load the app after the loop exists, or set PERL_ANYEVENT_MODEL=IOAsync)\n";
    }
}

# ===== scopes other than http =====

async sub _lifespan {
    my ($process, $scope, $receive, $send) = @_;
    while (1) {
        my $event = await $receive->();
        my $type = $event->{type} // '';
        if ($type eq 'lifespan.startup') {
            $process->{multiprocess} = $scope->{pagi} && $scope->{pagi}{is_worker} ? 1 : 0;
            $process->{state} = $scope->{state};
            await $send->({ type => 'lifespan.startup.complete' });
        }
        elsif ($type eq 'lifespan.shutdown') {
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
    }
}

async sub _websocket {
    my ($receive, $send) = @_;
    await $receive->();    # websocket.connect
    await $send->({ type => 'websocket.close', code => 1000 });
}

# ===== the environment =====

my %ENV_KEY;    # header name => %env key, filled as names are seen

sub _env_key {
    my ($name) = @_;
    %ENV_KEY = () if keys %ENV_KEY > 2000;    # bounded: names are client-chosen
    return $ENV_KEY{$name} //= do {
        (my $key = uc $name) =~ tr/-/_/;
        $key eq 'CONTENT_TYPE' || $key eq 'CONTENT_LENGTH' ? $key : "HTTP_$key";
    };
}

my $ERRORS = PAGI::App::WrapPSGI::Errors->handle;

sub _env {
    my ($process, $scope) = @_;
    my $raw   = $scope->{raw_path};
    my $query = $scope->{query_string} // '';
    unless (defined $raw) {
        # No raw_path: the decoded path, as UTF-8 bytes, escaped again.
        $raw = $scope->{path} // '/';
        utf8::encode($raw) if utf8::is_utf8($raw);
        $raw =~ s/([^A-Za-z0-9\-._~!\$&'()*+,;=:@\/])/sprintf '%%%02X', ord $1/ge;
    }
    my $path = $raw;
    $path =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge if index($path, '%') >= 0;
    my $script = '';
    my $root = $scope->{root_path};
    if (defined $root && length $root && $root ne '/') {
        utf8::encode($root = "$root") if utf8::is_utf8($root);
        $root =~ s{/+\z}{};
        $script = $root;
        my $n = length $root;
        $path = substr($path, $n)
            if substr($path, 0, $n) eq $root && (length $path == $n || substr($path, $n, 1) eq '/');
    }
    my $pagi = $scope->{pagi};
    my $scheme = $scope->{scheme} // 'http';
    my %env = (
        REQUEST_METHOD    => $scope->{method} // 'GET',
        SCRIPT_NAME       => $script,
        PATH_INFO         => $path,
        REQUEST_URI       => length $query ? "$raw?$query" : $raw,
        QUERY_STRING      => $query,
        SERVER_PROTOCOL   => 'HTTP/' . ($scope->{http_version} // '1.1'),
        'psgi.version'    => [ 1, 1 ],
        'psgi.url_scheme' => $scheme,
        'psgi.errors'     => $ERRORS,
        'psgi.multithread'  => 0,
        'psgi.multiprocess' => $pagi && exists $pagi->{is_worker} ? ($pagi->{is_worker} ? 1 : 0) : $process->{multiprocess},
        'psgi.run_once'     => 0,
        'psgi.nonblocking'  => 1,
        'psgi.streaming'    => 1,
        'psgix.input.buffered' => 1,
        'pagi.scope'        => $scope,
        'pagi.state'        => $scope->{state} // $process->{state} // {},
    );
    for my $pair (@{ $scope->{headers} || [] }) {
        my $key = $ENV_KEY{ $pair->[0] } // _env_key($pair->[0]);
        if (exists $env{$key}) {
            $env{$key} .= ($key eq 'HTTP_COOKIE' ? '; ' : ', ') . $pair->[1];
        }
        else {
            $env{$key} = $pair->[1];
        }
    }
    if (my $server = $scope->{server}) {
        @env{qw(SERVER_NAME SERVER_PORT)} = @$server;
    }
    if (!defined $env{SERVER_PORT}) {
        # A Unix socket: the Host header names what the client asked for.
        my ($host, $port) = ($env{HTTP_HOST} // '') =~ /\A(\[[^\]]*\]|[^:]*)(?::(\d+))?\z/;
        $env{SERVER_NAME} = length($host // '') ? $host : 'localhost';
        $env{SERVER_PORT} = $port // ($scheme eq 'https' ? 443 : 80);
    }
    if (my $client = $scope->{client}) {
        @env{qw(REMOTE_ADDR REMOTE_PORT)} = @$client;
    }
    return \%env;
}

# ===== the request =====

my %KIND = (
    http => { request => 'http.request', start => 'http.response.start', body => 'http.response.body', fh => 1 },
    sse  => { request => 'sse.request', start => 'sse.http.response.start', body => 'sse.http.response.body', fh => 0 },
);

async sub _http {
    my ($self, $psgi, $process, $scope, $receive, $send, $type) = @_;
    my $kind = $KIND{$type};
    my $env = _env($process, $scope);

    # A request with neither Content-Length nor Transfer-Encoding has no body
    # (RFC 9112 6.3): nothing to wait for.
    if ($env->{CONTENT_LENGTH} || defined $env->{HTTP_TRANSFER_ENCODING}) {
        my $input = await _read_body($self, $env, $receive, $send, $kind);
        return unless $input;
        $env->{'psgi.input'} = $input;
    }
    else {
        open my $input, '<', \(my $empty = '');
        $env->{'psgi.input'} = $input;
    }

    my $res = eval { $psgi->($env) };
    unless (defined $res) {
        my $error = $@ || "the PSGI application returned undef\n";
        return await _app_error($env, $send, $kind, $error);
    }
    if (ref $res eq 'ARRAY') {
        if (defined(my $problem = _check_response($res, 0))) {
            return await _shape_error($env, $send, $kind, $problem);
        }
        return await _send_response($env, $send, $kind, $res);
    }
    if ((reftype($res) // '') eq 'CODE') {
        return await _delayed($env, $receive, $send, $kind, $res);
    }
    return await _shape_error($env, $send, $kind,
        'PSGI response must be an array reference or a code reference, got ' . _describe($res));
}

# Collects the body: memory up to memory_body_limit, then an anonymous temp
# file. Returns the psgi.input handle, or undef when the request ended
# (client gone, or a 413 was sent).
async sub _read_body {
    my ($self, $env, $receive, $send, $kind) = @_;
    my $limit = $self->{memory_body_limit};
    my $max   = $self->{max_body_size};
    my $want  = $kind->{request};
    my ($buffer, $file, $total) = ('', undef, 0);
    while (1) {
        my $event = await $receive->();
        return undef if ($event->{type} // '') ne $want;
        my $chunk = $event->{body};
        if (defined $chunk && length $chunk) {
            $total += length $chunk;
            if (defined $max && $max && $total > $max) {
                await _plain($send, $kind, 413, "Payload Too Large\n");
                return undef;
            }
            if ($file) {
                print {$file} $chunk or die "psgi.input: cannot write the request body to a temporary file: $!\n";
            }
            elsif (length($buffer) + length($chunk) > $limit) {
                open $file, '+>', undef or die "psgi.input: cannot create a temporary file: $!\n";
                binmode $file;
                print {$file} $buffer, $chunk or die "psgi.input: cannot write the request body to a temporary file: $!\n";
                $buffer = '';
            }
            elsif (length $buffer) { $buffer .= $chunk }
            else                   { $buffer = $chunk }
        }
        last unless $event->{more};
    }
    if (defined $env->{HTTP_TRANSFER_ENCODING} || !defined $env->{CONTENT_LENGTH}) {
        # De-chunked by the server and read whole: the length is now known.
        delete $env->{HTTP_TRANSFER_ENCODING};
        $env->{CONTENT_LENGTH} = $total;
    }
    if ($file) {
        $file->flush or die "psgi.input: cannot write the request body to a temporary file: $!\n";
        seek $file, 0, 0;
        return $file;
    }
    open my $input, '<', \$buffer;
    return $input;
}

# ===== responses =====

sub _describe {
    my ($v) = @_;
    return 'undef' unless defined $v;
    return ref $v ? (blessed $v ? 'a ' . ref($v) . ' object' : 'a ' . lc(reftype $v) . ' reference') : "'$v'";
}

sub _is_handle_body {
    my ($body) = @_;
    return 1 if blessed $body && $body->can('getline');
    return (reftype($body) // '') eq 'GLOB' && *{$body}{IO} ? 1 : 0;
}

# undef when $res is a PSGI response (of 2 elements when $streaming), else
# the problem.
sub _check_response {
    my ($res, $streaming) = @_;
    return 'PSGI response must be an array reference, got ' . _describe($res) unless ref $res eq 'ARRAY';
    my $n = @$res;
    return "PSGI response must have 3 elements (status, headers, body)"
        . ($streaming ? ' or 2 (status, headers) for a streaming writer' : '') . ", got $n"
        unless $n == 3 || ($streaming && $n == 2);
    my ($status, $headers, $body) = @$res;
    return 'PSGI response status must be an integer from 100 to 999, got ' . _describe($status)
        unless defined $status && !ref $status && $status =~ /\A[1-9][0-9][0-9]\z/;
    return 'PSGI response headers must be an array reference, got ' . _describe($headers)
        unless ref $headers eq 'ARRAY';
    return 'PSGI response headers must be an even-sized list of names and values, got ' . scalar(@$headers) . ' elements'
        if @$headers % 2;
    for (my $i = 0; $i < @$headers; $i += 2) {
        return 'PSGI response header ' . ($i / 2 + 1) . ' has no name'
            unless defined $headers->[$i] && length $headers->[$i];
        return "PSGI response header '$headers->[$i]' has an undefined value" unless defined $headers->[$i + 1];
    }
    return undef if $n == 2 || ref $body eq 'ARRAY' || _is_handle_body($body);
    return 'PSGI response body must be an array reference or a filehandle (an object with getline), got '
        . _describe($body);
}

sub _pairs {
    my ($flat) = @_;
    my @pairs;
    for (my $i = 0; $i < @$flat; $i += 2) {
        push @pairs, [ lc $flat->[$i], "$flat->[$i + 1]" ];
    }
    return \@pairs;
}

sub _wide_problem {
    my ($bytes) = @_;
    return undef unless utf8::is_utf8($bytes);
    my $copy = $bytes;
    return utf8::downgrade($copy, 1) ? undef
        : 'PSGI response body contains characters above 255 (wide characters): encode it to bytes';
}

# A checked 3-element response: head, then the body.
async sub _send_response {
    my ($env, $send, $kind, $res) = @_;
    my ($status, $headers, $body) = @$res;
    if (ref $body eq 'ARRAY') {
        my $bytes = @$body == 1 ? $body->[0] // '' : join '', map { $_ // '' } @$body;
        if (defined(my $problem = _wide_problem($bytes))) {
            return await _shape_error($env, $send, $kind, $problem);
        }
        return unless await _start($env, $send, $kind, $status, $headers);
        await $send->({ type => $kind->{body}, body => "$bytes", more => 0 });
        return;
    }
    return unless await _start($env, $send, $kind, $status, $headers);
    await _send_handle_body($send, $kind, $body);
}

# http.response.start; false (after a 500) when the server refused it, e.g.
# for a header with a line break.
async sub _start {
    my ($env, $send, $kind, $status, $headers) = @_;
    my $f = $send->({ type => $kind->{start}, status => 0 + $status, headers => _pairs($headers) });
    # A refused start sent nothing: the 500 can still go out.
    my $ok = eval { await $f; 1 };
    return 1 if $ok;
    my $error = $@;
    $error =~ s/\s+\z//;
    await _shape_error($env, $send, $kind, "PSGI response rejected by the server: $error");
    return 0;
}

# A real file goes to the server (sendfile on PAGI::Server); anything else
# is read with getline, one awaited chunk at a time.
async sub _send_handle_body {
    my ($send, $kind, $body) = @_;
    if ($kind->{fh} && _is_real_file($body)) {
        my $offset = tell $body;
        await $send->({ type => $kind->{body}, fh => $body, ($offset > 0 ? (offset => $offset) : ()) });
        close $body;
        return;
    }
    my $ok = eval {
        while (1) {
            my $chunk = do { local $/ = \65536; $body->getline };
            last unless defined $chunk;
            next unless length $chunk;
            if (defined(my $problem = _wide_problem($chunk))) { die "$problem\n" }
            await $send->({ type => $kind->{body}, body => $chunk, more => 1 });
        }
        await $send->({ type => $kind->{body}, body => '', more => 0 });
        1;
    };
    my $error = $@;
    eval { $body->close } if blessed $body ? $body->can('close') : 1;
    die $error unless $ok;
}

# Readable with sendfile as is: a descriptor on a regular file, no tie, and
# no layer that would translate the bytes.
sub _is_real_file {
    my ($fh) = @_;
    return 0 unless (reftype($fh) // '') eq 'GLOB' && *{$fh}{IO} && !tied *$fh;
    my $fd = fileno $fh;
    return 0 unless defined $fd && $fd >= 0 && -f $fh;
    for my $layer (PerlIO::get_layers($fh)) {
        return 0 unless $layer =~ /\A(?:unix|perlio|stdio|raw)\z/;
    }
    return 1;
}

# ===== delayed responses =====

async sub _delayed {
    my ($env, $receive, $send, $kind, $code) = @_;
    my $done = Future->new;
    my %state;    # responded, started, writer_f, full_f
    my $responder = sub {
        my ($res) = @_;
        if ($state{responded}++) {
            _log($env, 'PSGI responder called more than once; the call is ignored');
            return undef;
        }
        if (defined(my $problem = _check_response($res, 1))) {
            $state{full_f} = _shape_error($env, $send, $kind, $problem)->on_ready($done);
            # What was asked for, going nowhere: the app can go on.
            return @$res == 2 ? PAGI::App::WrapPSGI::Writer->discarding : undef if ref $res eq 'ARRAY';
            return undef;
        }
        $state{started} = 1;
        if (@$res == 3) {
            $state{full_f} = _send_response($env, $send, $kind, $res)->on_ready($done);
            return undef;
        }
        my $start = $send->({ type => $kind->{start}, status => 0 + $res->[0], headers => _pairs($res->[1]) });
        return PAGI::App::WrapPSGI::Writer->new(
            send => $send, body_type => $kind->{body}, start => $start, done => $done,
        );
    };
    my $ok = eval { $code->($responder); 1 };
    unless ($ok) {
        my $error = $@;
        return await _app_error($env, $send, $kind, $error) unless $state{started};
        _log($env, "PSGI application error after the response started: $error");
        die $error;
    }
    # Until the response is complete, or the client is gone.
    my $end = Future->new;
    $done->on_ready(sub { $end->done unless $end->is_ready });
    _watch_disconnect($receive, $kind->{request}, $end) unless $done->is_ready;
    await $end;
    $done->get if $done->is_ready;    # a failed send fails the app: the server cuts the connection
    return;
}

# Resolves $end when $receive reports the end of the request (any event that
# is not a body chunk), without cancelling anything of the server's.
sub _watch_disconnect {
    my ($receive, $body_type, $end) = @_;
    my $next;
    $next = sub {
        return if $end->is_ready;
        $receive->()->on_done(sub {
            my ($event) = @_;
            if (($event->{type} // '') eq $body_type) { $next->() }
            else { undef $next; $end->done unless $end->is_ready }
        });
    };
    $next->();
    $end->on_ready(sub { undef $next });
}

# ===== errors =====

sub _log {
    my ($env, $message) = @_;
    $message =~ s/\s+\z//;
    my $where = "($env->{REQUEST_METHOD} $env->{REQUEST_URI})";
    my $errors = $env->{'psgi.errors'};
    # An app may have swapped psgi.errors for its own handle: it gets the
    # line, and the server's log too.
    if ($errors && (refaddr($errors) // 0) != refaddr($ERRORS)) {
        eval { $errors->print("$message $where\n") };
    }
    $ERRORS->print("$message $where\n");
}

async sub _app_error {
    my ($env, $send, $kind, $error) = @_;
    _log($env, "PSGI application error: $error");
    await _plain($send, $kind, 500, "Internal Server Error\n");
}

async sub _shape_error {
    my ($env, $send, $kind, $problem) = @_;
    _log($env, $problem);
    await _plain($send, $kind, 500, "Internal Server Error: $problem\n");
}

async sub _plain {
    my ($send, $kind, $status, $text) = @_;
    await $send->({ type => $kind->{start}, status => $status,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $text ] ] });
    await $send->({ type => $kind->{body}, body => $text, more => 0 });
}

1;
