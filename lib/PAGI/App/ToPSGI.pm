package PAGI::App::ToPSGI;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Future;
use Scalar::Util qw(blessed weaken);
use Encode ();
use PAGI::App::ToPSGI::Request;

use parent 'Exporter';
our @EXPORT_OK = qw(to_psgi);

my %DEFAULTS = (
    lifespan         => 1,
    loop             => undef,
    chunk_size       => 65536,
    startup_timeout  => 30,
    shutdown_timeout => 10,
);

# Adapters whose lifespan may need a shutdown at exit (weak references).
my @LIVE;

sub new {
    my ($class, %args) = @_;
    my $app = delete $args{app};
    Carp::croak("PAGI::App::ToPSGI->new: 'app' is required and must be a code reference")
        unless ref $app eq 'CODE';
    my %self = (app => $app);
    for my $key (sort keys %DEFAULTS) {
        $self{$key} = exists $args{$key} ? delete $args{$key} : $DEFAULTS{$key};
    }
    Carp::croak('PAGI::App::ToPSGI->new: unknown option(s): ' . join(', ', sort keys %args)) if %args;
    Carp::croak("PAGI::App::ToPSGI->new: 'chunk_size' must be a positive integer")
        unless defined $self{chunk_size} && $self{chunk_size} =~ /\A[1-9]\d*\z/;
    for my $key (qw(startup_timeout shutdown_timeout)) {
        Carp::croak("PAGI::App::ToPSGI->new: '$key' must be a non-negative number of seconds")
            unless defined $self{$key} && $self{$key} =~ /\A\d+(?:\.\d+)?\z/;
    }
    Carp::croak("PAGI::App::ToPSGI->new: 'loop' must be an IO::Async::Loop")
        if defined $self{loop} && !(blessed $self{loop} && $self{loop}->isa('IO::Async::Loop'));
    my $self = bless \%self, $class;
    push @LIVE, $self;
    weaken $LIVE[-1];
    return $self;
}

sub to_psgi {
    my ($app, %opts) = @_;
    return __PACKAGE__->new(app => $app, %opts)->to_app;
}

sub to_app {
    my ($self) = @_;
    return sub { $self->call($_[0]) };
}

sub call {
    my ($self, $env) = @_;
    my $request = PAGI::App::ToPSGI::Request->new(env => $env, chunk_size => $self->{chunk_size});
    return sub {
        my ($responder) = @_;
        $request->set_responder($responder);
        $self->_run($request, $env);
        return;
    } if $env->{'psgi.streaming'};
    $self->_run($request, $env);
    return $request->buffered_response;
}

# Runs one request; blocks until it is over unless the server is
# nonblocking and streams (then its event loop completes the Futures).
sub _run {
    my ($self, $request, $env) = @_;
    my $done = $self->_lifespan_started->then(
        sub { $self->_call_app($request, $env) },
        sub {
            my ($error) = @_;
            $request->app_finished(Future->fail($error));
            Future->done("lifespan: $error");
        },
    )->then(sub {
        my ($error) = @_;
        _log_to($env, "PAGI::App::ToPSGI: $error") if defined $error;
        Future->done;
    });
    if ($env->{'psgi.nonblocking'} && $env->{'psgi.streaming'}) {
        # Keep the chain alive until the server's loop has finished it.
        $self->{running}{"$done"} = $done;
        $done->on_ready(sub { delete $self->{running}{"$done"} });
        return;
    }
    $self->loop->await($done) unless $done->is_ready;
    return;
}

sub _call_app {
    my ($self, $request, $env) = @_;
    my $scope = $self->scope_for($env, $request);
    my $receive = sub { $request->receive };
    my $send    = sub { $request->send($_[0]) };
    my $f = eval { $self->{app}->($scope, $receive, $send) };
    $f = Future->fail($@ || 'died') if !defined $f && $@;
    $f = Future->done unless blessed $f && $f->can('followed_by');
    return $f->followed_by(sub { Future->done($request->app_finished($_[0])) });
}

sub _log_to {
    my ($env, $message) = @_;
    $message .= "\n" unless $message =~ /\n\z/;
    my $errors = $env->{'psgi.errors'};
    if ($errors && eval { $errors->print($message); 1 }) { return }
    warn $message;
}

=head1 NAME

PAGI::App::ToPSGI - run a PAGI http app on a PSGI server (Starman, plackup)

=head1 SYNOPSIS

    # app.psgi
    use Future::AsyncAwait;
    use PAGI::App::ToPSGI;

    my $pagi_app = async sub {
        my ($scope, $receive, $send) = @_;
        die "unsupported scope '$scope->{type}'\n" unless $scope->{type} eq 'http';
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => "hello\n", more => 0 });
    };

    PAGI::App::ToPSGI->new(app => $pagi_app)->to_app;

    # or, the same:
    use PAGI::App::ToPSGI qw(to_psgi);
    to_psgi($pagi_app);

    $ starman --workers 4 --listen :5000 app.psgi
    $ plackup -s HTTP::Server::PSGI app.psgi

=head1 DESCRIPTION

The reverse of L<PAGI::App::WrapPSGI>: a PAGI application, written for
C<http> scopes, becomes a PSGI application that any PSGI 1.1 server can run.
Each PSGI request is one C<http> scope; the request body comes from
C<psgi.input> through C<$receive>, and the response goes out through the
server's streaming responder and writer, one write per
C<http.response.body> event.

=head2 What maps to what

=over

=item Scope from C<%env>

    type          "http"
    pagi          { version => '0.3', spec_version => '0.3' }
    http_version  SERVER_PROTOCOL without "HTTP/" ("1.0", "1.1", "2")
    method        REQUEST_METHOD
    scheme        psgi.url_scheme
    path          SCRIPT_NAME . PATH_INFO, UTF-8 decoded when valid UTF-8,
                  else those bytes (PAGI-SPEC 2.3)
    raw_path      REQUEST_URI up to "?" (an absolute-form URI loses its
                  scheme and host); without REQUEST_URI, the path re-escaped
    root_path     SCRIPT_NAME, decoded the same way as path
    query_string  QUERY_STRING ("" when absent)
    headers       [ lc name, value ] from CONTENT_TYPE, CONTENT_LENGTH and
                  every HTTP_* key ("_" becomes "-"), sorted by name
    client        [ REMOTE_ADDR, REMOTE_PORT ] (omitted without REMOTE_ADDR)
    server        [ SERVER_NAME, SERVER_PORT ]
    state         a shallow copy of the lifespan state hash
    extensions    {} (none advertised)
    pagi.connection   per-request connection state (below)
    psgi.env      the PSGI %env itself, for code that needs psgix.* keys

The server has already split and merged the headers: their arrival order
is lost, repeated headers arrive joined as the server joined them, and a
header name that had an underscore comes back with a hyphen.

=item C<$receive>

C<http.request> events read from C<psgi.input>, at most C<chunk_size>
bytes each, C<more =E<gt> 1> until C<CONTENT_LENGTH> bytes were read
(a body the server did not measure, C<Transfer-Encoding: chunked> without
C<CONTENT_LENGTH>, is read to EOF). A request without a body gives one
C<< { body => '', more => 0 } >>. After the body, C<$receive> resolves to
C<http.disconnect> once the response is complete (PAGI-SPEC 3.1.1 [fix]);
a body cut short gives C<http.disconnect> at once.

=item C<$send>

C<http.response.start> records status and headers; the responder is
called with them at the first C<http.response.body>, so an app that dies
in between still gets a C<500>. A body sent whole in one event
(C<more =E<gt> 0> first) goes to the server as an array body; otherwise
each body event is one C<< $writer->write >> and the final one
C<< $writer->close >>. C<file> and C<fh> bodies (with C<offset> and
C<length>) are read and written in C<chunk_size> pieces, never slurped.
C<Transfer-Encoding> and C<Connection> headers from the app are dropped:
the PSGI server frames the response. For C<HEAD> no body bytes are
written.

Every event is checked: a bad one fails its C<$send> Future with a message
naming the event and the field (C<http.response.start: 'status' is
required>), including the header byte-safety rules of PAGI-SPEC 3.1.3, an
unknown type (C<Unrecognized event type 'x' for http protocol>), events
out of order and C<http.fullflush> (not advertised).

=item Trailers

PSGI has no trailers. C<< trailers => 1 >> is accepted, the
C<http.response.trailers> event ends the response, and its headers are
dropped.

=item Errors

An app that raises, or returns without C<http.response.start>, before
anything was handed to the server gets a C<500> (C<text/plain>); the error
goes to C<psgi.errors>. After the body began streaming PSGI offers no way
to abort, so the writer is closed and the body ends where the app stopped
(the error is still logged). An app that returns with its body unfinished
has the writer closed for it.

=item C<pagi.connection>

Follows PAGI-SPEC 3.1.5, but PSGI reports no client disconnects: an
abnormal end is only seen when the body was cut short
(C<client_closed>), reading it failed (C<read_error>), the writer died
(C<write_error>) or the app raised (C<server_error>).

=back

=head2 How the coroutine runs inside a PSGI server

If the app's Futures complete at once (no timers, no IO), the request
runs to its end inside the PSGI call and no event loop is involved.

On a blocking server (C<psgi.nonblocking> false: Starman,
L<HTTP::Server::PSGI>, mod_perl) the adapter drives the app's Future to
completion with an L<IO::Async::Loop> (C<< $loop->await >>) inside the
responder callback; the worker serves one request at a time, as it would
any PSGI app. The loop is C<< IO::Async::Loop->new >>, the process's
shared loop, so an app awaiting C<< $loop->delay_future >>,
L<Future::IO> or L<Net::Async::HTTP> on it just works. It is created at
the first request that needs it, in the worker process; do not create one
in a preforking server's master (C<--preload-app> with an app that makes
a loop at load time) or the workers share its epoll handle.

On a nonblocking streaming server (C<psgi.nonblocking> true, such as
Twiggy or PAGI's own L<PAGI::App::WrapPSGI>) the adapter starts the
coroutine and returns at once; the server's event loop must complete the
app's Futures, so the app must await Futures of that loop (AnyEvent-based
ones under Twiggy, unless IO::Async runs on AnyEvent there through
L<IO::Async::Loop::AnyEvent>).

Without C<psgi.streaming> the adapter blocks as above and returns the
whole response as C<[status, headers, \@chunks]>: the body is held in
memory.

Do not await C<$receive> for a disconnect before sending the response
under a blocking server: PSGI never reports one, and that C<$receive>
only resolves once the response is complete.

=head2 Lifespan

The app gets a C<lifespan> scope once per process, lazily: the first
request in each process (each Starman worker) runs C<lifespan.startup>
and waits for it, bounded by C<startup_timeout>. Its C<state> hash is
shallow-copied into every request scope. An app that raises on the
lifespan scope, or returns without answering, does not support lifespan,
and requests go on. C<lifespan.startup.failed> cannot stop a PSGI server:
every request of that process then gets a C<500> and the message is
logged to C<psgi.errors>.

C<lifespan.shutdown> is sent at process exit from an C<END> block, or
when the adapter object is destroyed, bounded by C<shutdown_timeout>.
This is best effort: a worker killed by C<SIGKILL>, or one that leaves
through C<POSIX::_exit>, never runs it.

=head2 Not in PSGI

C<websocket> and C<sse> scopes do not exist here: PSGI has no WebSocket
and the adapter never makes C<sse> scopes. A request with
C<Accept: text/event-stream> is an ordinary C<http> scope, and the app
can stream C<text/event-stream> itself with C<more =E<gt> 1> bodies.
Serve WebSocket and SSE endpoints with a PAGI server (L<PAGI::Server>).

=head1 OPTIONS

=head2 app

    app => $pagi_app

The PAGI application, an C<async sub ($scope, $receive, $send)>.
Required.

=head2 lifespan

    lifespan => 0

Whether to run the lifespan protocol; defaults to C<1>.

=head2 loop

    loop => $loop

The L<IO::Async::Loop> that drives the app on blocking servers (and runs
the lifespan timeouts); defaults to C<< IO::Async::Loop->new >>, made in
the process at first need.

=head2 chunk_size

    chunk_size => 65536

Largest C<http.request> body piece, and the piece size for C<file> and
C<fh> bodies; defaults to C<65536>.

=head2 startup_timeout, shutdown_timeout

    startup_timeout => 30, shutdown_timeout => 10

Seconds to wait for the lifespan answers (C<0> waits forever); default to
C<30> and C<10>.

=head1 METHODS

=head2 new

    my $adapter = PAGI::App::ToPSGI->new(app => $pagi_app, %options);

Croaks on a missing C<app>, a bad value or an unknown option.

=head2 to_app

    my $psgi_app = $adapter->to_app;

The PSGI application (a code reference taking C<%env>).

=head2 call

    my $response = $adapter->call(\%env);

Handles one PSGI request: a delayed-response code reference when the
server supports C<psgi.streaming>, else the finished response arrayref.

=head2 scope_for

    my $scope = $adapter->scope_for(\%env);

The C<http> scope built from C<%env> as described above (without
C<pagi.connection> unless a request object is passed second).

=head2 to_psgi

    use PAGI::App::ToPSGI qw(to_psgi);
    my $psgi_app = to_psgi($pagi_app, %options);

Shortcut for C<< PAGI::App::ToPSGI->new(app => $pagi_app, %options)->to_app >>.

=head1 SEE ALSO

L<PAGI::App::WrapPSGI> (PSGI apps on a PAGI server), L<PAGI::Server>,
L<PSGI>, L<Starman>, L<Plack>.

=cut

sub scope_for {
    my ($self, $env, $request) = @_;
    my $script = $env->{SCRIPT_NAME} // '';
    my $path_bytes = $script . ($env->{PATH_INFO} // '');
    $path_bytes = '/' if $path_bytes eq '';
    my ($version) = ($env->{SERVER_PROTOCOL} // '') =~ m{\AHTTP/(\d(?:\.\d)?)\z};

    my @headers;
    push @headers, [ 'content-length', $env->{CONTENT_LENGTH} ]
        if defined $env->{CONTENT_LENGTH} && length $env->{CONTENT_LENGTH};
    push @headers, [ 'content-type', $env->{CONTENT_TYPE} ] if defined $env->{CONTENT_TYPE};
    for my $key (sort grep { /\AHTTP_/ } keys %$env) {
        # PSGI forbids these two; a server that sets them anyway would double them.
        next if $key eq 'HTTP_CONTENT_LENGTH' || $key eq 'HTTP_CONTENT_TYPE';
        (my $name = lc substr($key, 5)) =~ tr/_/-/;
        push @headers, [ $name, $env->{$key} ];
    }
    @headers = sort { $a->[0] cmp $b->[0] } @headers;

    my %scope = (
        type         => 'http',
        pagi         => { version => '0.3', spec_version => '0.3' },
        http_version => $version // '1.1',
        method       => $env->{REQUEST_METHOD} // 'GET',
        scheme       => $env->{'psgi.url_scheme'} // 'http',
        path         => _decode_path($path_bytes),
        raw_path     => _raw_path($env, $path_bytes),
        root_path    => _decode_path($script),
        query_string => $env->{QUERY_STRING} // '',
        headers      => \@headers,
        server       => [ $env->{SERVER_NAME}, _port($env->{SERVER_PORT}) ],
        state        => { %{ $self->{state} // {} } },
        extensions   => {},
        'psgi.env'   => $env,
    );
    $scope{client} = [ $env->{REMOTE_ADDR}, _port($env->{REMOTE_PORT}) ] if defined $env->{REMOTE_ADDR};
    $scope{'pagi.connection'} = $request if $request;
    return \%scope;
}

sub _port { defined $_[0] && $_[0] =~ /\A\d+\z/ ? $_[0] + 0 : undef }

# PAGI-SPEC 2.3: characters when the bytes are valid UTF-8, else the bytes.
sub _decode_path {
    my ($bytes) = @_;
    return $bytes unless $bytes =~ /[\x80-\xFF]/;
    my $copy = $bytes;
    my $text = eval { Encode::decode('UTF-8', $copy, Encode::FB_CROAK) };
    return defined $text ? $text : $bytes;
}

sub _raw_path {
    my ($env, $path_bytes) = @_;
    my $uri = $env->{REQUEST_URI};
    if (defined $uri && length $uri) {
        $uri =~ s/\?.*\z//s;
        $uri =~ s{\A[A-Za-z][A-Za-z0-9+.\-]*://[^/]*}{};
        return length $uri ? $uri : '/';
    }
    (my $escaped = $path_bytes) =~ s{([^A-Za-z0-9\-._~!\$&'()*+,;=:\@/])}{sprintf '%%%02X', ord $1}ge;
    return $escaped;
}

# ---- the event loop and the lifespan, both per process ----

sub loop {
    my ($self) = @_;
    if (!$self->{loop_obj} || $self->{loop_pid} != $$) {
        $self->{loop_obj} = $self->{loop} // do { require IO::Async::Loop; IO::Async::Loop->new };
        $self->{loop_pid} = $$;
    }
    return $self->{loop_obj};
}

# A Future done once this process's lifespan startup is over (or failed
# with "Lifespan startup failed: ..."), started at the first request.
sub _lifespan_started {
    my ($self) = @_;
    return Future->done unless $self->{lifespan};
    my $pid = $self->{lifespan_pid} // 0;
    return $self->{startup_f} if $pid == $$ && $self->{startup_f};
    require PAGI::Server::Lifespan;
    $self->{state} = {};
    $self->{lifespan_pid} = $$;
    $self->{lifespan_obj} = PAGI::Server::Lifespan->new(
        app => $self->{app}, loop => $self->loop, state => $self->{state}, mode => 'auto',
        startup_timeout => $self->{startup_timeout}, shutdown_timeout => $self->{shutdown_timeout},
        log => sub {
            my ($level, $message) = @_;
            warn "PAGI::App::ToPSGI: $message\n" unless $level eq 'info';
        },
    );
    my $startup = $self->{lifespan_obj}->startup;
    $self->{startup_f} = $startup;
    return $startup;
}

# Sends lifespan.shutdown in the process that ran the startup; once.
sub shutdown_lifespan {
    my ($self) = @_;
    my $lifespan = delete $self->{lifespan_obj} or return;
    return unless ($self->{lifespan_pid} // 0) == $$;
    my $startup = $self->{startup_f};
    return unless $startup && $startup->is_done;
    my $f = $lifespan->shutdown;
    eval { $self->loop->await($f) unless $f->is_ready; 1 }
        or warn "PAGI::App::ToPSGI: lifespan shutdown: $@";
    return;
}

sub DESTROY {
    my ($self) = @_;
    return if ${^GLOBAL_PHASE} eq 'DESTRUCT';
    $self->shutdown_lifespan;
}

END {
    for my $adapter (grep { defined } @LIVE) {
        $adapter->shutdown_lifespan;
    }
}

1;
