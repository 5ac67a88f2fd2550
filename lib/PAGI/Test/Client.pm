package PAGI::Test::Client;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Future;
use IO::Async::Loop;
use Scalar::Util qw(blessed looks_like_number);
use Time::HiRes ();
use PAGI::Server::Lifespan;
use PAGI::Test::Client::Cookies;
use PAGI::Test::Client::HTTP;
use PAGI::Test::Client::Request;
use PAGI::Test::Client::Response;
use PAGI::Test::Client::SSE;
use PAGI::Test::Client::WebSocket;

our @CARP_NOT = qw(PAGI::Test::Client::HTTP PAGI::Test::Client::WebSocket PAGI::Test::Client::SSE
                   PAGI::Test::Client::Request PAGI::Test::Client::Cookies);

my %DEFAULT = (
    lifespan         => 1,
    scheme           => 'http',
    http_version     => '1.1',
    server           => [ '127.0.0.1', 5000 ],
    client           => [ '127.0.0.1', 40000 ],
    root_path        => '',
    headers          => [],
    extensions       => {},
    timeout          => 10,
    chunk_size       => undef,
    raise_app_errors => 1,
    loop             => undef,
);

sub new {
    my ($class, %args) = @_;
    my $app = delete $args{app};
    croak 'PAGI::Test::Client->new: app is required (a PAGI application: a code reference)' unless ref $app eq 'CODE';
    my $self = bless { app => $app, state => {}, cookies => PAGI::Test::Client::Cookies->new }, $class;
    for my $name (keys %DEFAULT) {
        $self->{$name} = exists $args{$name} ? delete $args{$name} : $DEFAULT{$name};
    }
    croak 'PAGI::Test::Client->new: unknown option(s): ' . join(', ', sort keys %args) if %args;
    $self->_check_options;
    $self->{default_headers} = [ PAGI::Test::Client::Request::header_pairs($self->{headers}, 'headers') ];
    $self->{loop} //= IO::Async::Loop->new;
    return $self;
}

sub _check_options {
    my ($self) = @_;
    my $bad = sub { croak "PAGI::Test::Client->new: $_[0]" };
    $bad->("scheme must be 'http' or 'https' (got '$self->{scheme}')")
        unless defined $self->{scheme} && $self->{scheme} =~ /\Ahttps?\z/;
    $bad->("http_version must be '1.0', '1.1' or '2'")
        unless defined $self->{http_version} && $self->{http_version} =~ /\A(?:1\.0|1\.1|2)\z/;
    $bad->('server must be an array reference [host, port]')
        unless ref $self->{server} eq 'ARRAY' && @{ $self->{server} } == 2;
    $bad->('client must be an array reference [ip, port], or undef to leave it out of the scope')
        if defined $self->{client} && !(ref $self->{client} eq 'ARRAY' && @{ $self->{client} } == 2);
    $bad->('root_path must be a string') if !defined $self->{root_path} || ref $self->{root_path};
    $bad->('extensions must be a hash reference') unless ref $self->{extensions} eq 'HASH';
    $bad->("timeout must be a positive number of seconds (got '" . ($self->{timeout} // 'undef') . "')")
        unless looks_like_number($self->{timeout}) && $self->{timeout} > 0;
    $bad->('chunk_size must be a positive integer')
        if defined $self->{chunk_size} && $self->{chunk_size} !~ /\A[1-9]\d*\z/;
    $bad->('loop must be an IO::Async::Loop') if defined $self->{loop} && !(blessed $self->{loop} && $self->{loop}->isa('IO::Async::Loop'));
}

sub app        { $_[0]{app} }
sub loop       { $_[0]{loop} }
sub state      { $_[0]{state} }
sub timeout    { $_[0]{timeout} }
sub cookie_jar { $_[0]{cookies} }

sub cookie { $_[0]{cookies}->get($_[1]) }

sub cookies { $_[0]{cookies}->all }

# ===== lifespan =====

sub start {
    my ($self) = @_;
    return $self if $self->{started} || !$self->{lifespan};
    $self->{started} = 1;
    Scalar::Util::weaken(my $weak = $self);    # the runner must not keep the client alive
    my $lifespan = $self->{lifespan_runner} = PAGI::Server::Lifespan->new(
        app => $self->{app}, loop => $self->{loop}, state => $self->{state}, mode => 'auto',
        startup_timeout => $self->{timeout}, shutdown_timeout => $self->{timeout},
        log => sub { $weak->_log(@_) if $weak },
    );
    my $f = $lifespan->startup;
    $self->_wait(sub { $f->is_ready }, $self->{timeout} + 1)
        or croak "PAGI::Test::Client: lifespan startup did not finish within $self->{timeout}s";
    if ($f->is_failed) {
        my $message = ($f->failure)[0] =~ s/\s+\z//r;
        $self->{startup_failed} = $message;
        croak "PAGI::Test::Client: $message";
    }
    return $self;
}

# Lifespan messages: errors and warnings are the test's business.
sub _log {
    my ($self, $level, $message) = @_;
    return if $level eq 'info';
    push @{ $self->{lifespan_errors} }, $message if $level eq 'error';
    warn "PAGI::Test::Client: $message\n" unless $self->{collect_lifespan_errors};
}

sub stop {
    my ($self) = @_;
    my $lifespan = delete $self->{lifespan_runner};
    my $started = delete $self->{started};
    return $self unless $started && $lifespan && !delete $self->{startup_failed};
    local $self->{collect_lifespan_errors} = 1;
    local $self->{lifespan_errors} = [];
    my $f = $lifespan->shutdown;
    $self->_wait(sub { $f->is_ready }, $self->{timeout} + 1)
        or croak "PAGI::Test::Client: lifespan shutdown did not finish within $self->{timeout}s";
    croak "PAGI::Test::Client: $self->{lifespan_errors}[0]" if @{ $self->{lifespan_errors} };
    return $self;
}

sub DESTROY {
    my ($self) = @_;
    return if ${^GLOBAL_PHASE} eq 'DESTRUCT' || !$self->{started};
    local $@;
    eval { $self->stop; 1 } or warn $@;
}

sub _ensure_started {
    my ($self) = @_;
    croak "PAGI::Test::Client: lifespan startup failed earlier: $self->{startup_failed}" if $self->{startup_failed};
    $self->start;
}

# ===== running the app =====

# Calls the app; always returns a Future (a die or a non-Future return
# become a failed or a done one).
sub _call_app {
    my ($self, @args) = @_;
    my $f = eval { $self->{app}->(@args) };
    return Future->fail($@) if !defined $f && $@;
    return $f if blessed $f && $f->can('is_ready');
    return Future->done;
}

# Runs the loop until $cond is true (returns 1) or $timeout seconds pass
# (returns 0). Apps resume synchronously when the client completes their
# Futures, so the loop only matters for the app's own timers and I/O.
sub _wait {
    my ($self, $cond, $timeout) = @_;
    my $deadline = Time::HiRes::time() + $timeout;
    until ($cond->()) {
        my $left = $deadline - Time::HiRes::time();
        return 0 if $left <= 0;
        $self->{loop}->loop_once($left);
    }
    return 1;
}

sub _option_timeout {
    my ($self, $o) = @_;
    my $t = delete $o->{timeout} // return $self->{timeout};
    croak "timeout must be a positive number of seconds (got '$t')" unless looks_like_number($t) && $t > 0;
    return $t;
}

# The scope of PAGI-SPEC 2.1, as PAGI::Server builds it.
sub _scope {
    my ($self, %s) = @_;
    my $ws = $s{type} eq 'websocket';
    my $scheme = $self->{scheme};
    $scheme = $scheme eq 'https' ? 'wss' : 'ws' if $ws;
    return {
        type         => $s{type},
        pagi         => { version => '0.3', spec_version => '0.3' },
        http_version => $self->{http_version},
        ($ws ? () : (method => $s{method})),
        scheme       => $scheme,
        path         => $s{path},
        raw_path     => $s{raw_path},
        query_string => $s{query_string},
        root_path    => $self->{root_path},
        headers      => $s{headers},
        ($self->{client} ? (client => [ @{ $self->{client} } ]) : ()),
        server       => [ @{ $self->{server} } ],
        state        => { %{ $self->{state} } },
        extensions   => { %{ $self->{extensions} }, ($ws ? ('websocket.http.response' => {}) : ()) },
    };
}

# Path, query, headers (defaults, protocol ones, the request's own, cookies).
sub _prepare {
    my ($self, $o, $protocol_headers, $body_headers) = @_;
    my ($path, $raw_path, $query_string) = PAGI::Test::Client::Request::target($o->{path}, delete $o->{query});
    my @own = PAGI::Test::Client::Request::header_pairs(delete $o->{headers}, 'headers');
    my ($host, $port) = @{ $self->{server} };
    my $default_port = $self->{scheme} eq 'https' ? 443 : 80;
    my @headers = PAGI::Test::Client::Request::merge_headers(
        [ [ host => defined $port && $port != $default_port ? "$host:$port" : $host ] ],
        $self->{default_headers}, $protocol_headers, $body_headers, \@own);
    # One cookie pair (PAGI-SPEC 2.2): the request's own, extra, then the jar's.
    my @cookie = map { $_->[1] } grep { $_->[0] eq 'cookie' } @headers;
    my $extra = delete $o->{cookies};
    if (defined $extra) {
        croak 'cookies must be a hash reference of name => value' unless ref $extra eq 'HASH';
        push @cookie, map { "$_=$extra->{$_}" } sort keys %$extra;
    }
    my $jar = $self->{cookies}->header_for($path, $self->{scheme});
    push @cookie, $jar if defined $jar;
    @headers = grep { $_->[0] ne 'cookie' } @headers;
    push @headers, [ cookie => join '; ', @cookie ] if @cookie;
    return (path => $path, raw_path => $raw_path, query_string => $query_string, headers => \@headers);
}

# ===== HTTP =====

for my $method (qw(get post put patch delete head options)) {
    no strict 'refs';
    *$method = sub { my $self = shift; $self->request(uc $method, @_) };
}

my %REQUEST_OPTION = map { $_ => 1 } qw(headers query json form multipart body cookies chunk_size timeout);

sub request {
    my ($self, $method, $path, %o) = @_;
    croak 'request: the method is required' unless defined $method && $method =~ /\A[A-Za-z]+\z/;
    $method = uc $method;
    my @unknown = grep { !$REQUEST_OPTION{$_} } sort keys %o;
    croak "$method: unknown option(s): @unknown" if @unknown;
    my $timeout = $self->_option_timeout(\%o);
    my ($body, $type) = PAGI::Test::Client::Request::body(\%o);
    my @body_headers = (defined $type ? [ 'content-type', $type ] : (),
                        length $body || $method =~ /\A(?:POST|PUT|PATCH)\z/ ? [ 'content-length', length $body ] : ());
    my %s = $self->_prepare({ %o, path => $path }, [], \@body_headers);
    my $chunk_size = $o{chunk_size} // $self->{chunk_size};
    croak 'chunk_size must be a positive integer' if defined $chunk_size && $chunk_size !~ /\A[1-9]\d*\z/;
    $self->_ensure_started;
    my $exchange = PAGI::Test::Client::HTTP->new(
        client => $self, scope => $self->_scope(type => 'http', method => $method, %s),
        body => $body, chunk_size => $chunk_size, timeout => $timeout, what => "$method $path");
    my $response = $exchange->run;
    $self->{cookies}->store_response($response->{headers}, $s{path});
    return $response;
}

# ===== WebSocket and SSE =====

sub websocket {
    my ($self, $path, %o) = @_;
    my $timeout = $self->_option_timeout(\%o);
    my @unknown = grep { !/\A(?:headers|query|cookies|subprotocols)\z/ } sort keys %o;
    croak "websocket: unknown option(s): @unknown" if @unknown;
    my $offered = delete $o{subprotocols} // [];
    croak 'websocket: subprotocols must be an array reference of strings' unless ref $offered eq 'ARRAY';
    my $key = join '', map { chr int rand 256 } 1 .. 16;
    require MIME::Base64;
    my @handshake = (
        [ upgrade => 'websocket' ], [ connection => 'Upgrade' ],
        [ 'sec-websocket-key' => MIME::Base64::encode_base64($key, '') ], [ 'sec-websocket-version' => '13' ],
        (@$offered ? [ 'sec-websocket-protocol' => join ', ', @$offered ] : ()),
    );
    my %s = $self->_prepare({ %o, path => $path }, \@handshake, []);
    $self->_ensure_started;
    my $scope = $self->_scope(type => 'websocket', %s);
    # As PAGI::Server: split on commas, trimmed (PAGI-SPEC 2.1).
    $scope->{subprotocols} = [ grep { length } map { s/\A\s+|\s+\z//gr } map { split /,/, $_->[1] }
                               grep { $_->[0] eq 'sec-websocket-protocol' } @{ $s{headers} } ];
    return PAGI::Test::Client::WebSocket->new(client => $self, scope => $scope, timeout => $timeout, what => "websocket $path")->connect;
}

sub sse {
    my ($self, $path, %o) = @_;
    my $timeout = $self->_option_timeout(\%o);
    my @unknown = grep { !/\A(?:headers|query|cookies|method|last_event_id|json|form|body)\z/ } sort keys %o;
    croak "sse: unknown option(s): @unknown" if @unknown;
    my $method = uc(delete $o{method} // 'GET');
    my $last_id = delete $o{last_event_id};
    my ($body, $type) = PAGI::Test::Client::Request::body(\%o);
    delete @o{qw(json form body)};
    my @body_headers = (defined $type ? [ 'content-type', $type ] : (), length $body ? [ 'content-length', length $body ] : ());
    my @protocol = ([ accept => 'text/event-stream' ], [ 'cache-control' => 'no-cache' ],
                    (defined $last_id ? [ 'last-event-id' => $last_id ] : ()));
    my %s = $self->_prepare({ %o, path => $path }, \@protocol, \@body_headers);
    $self->_ensure_started;
    my $scope = $self->_scope(type => 'sse', method => $method, %s);
    return PAGI::Test::Client::SSE->new(client => $self, scope => $scope, body => $body, timeout => $timeout,
                                        what => "sse $path")->connect;
}

1;

__END__

=head1 NAME

PAGI::Test::Client - drive a PAGI application in process, without sockets

=head1 SYNOPSIS

    use Test::More;
    use PAGI::Test::Client;

    my $client = PAGI::Test::Client->new(app => $app);

    my $res = $client->post('/api/data', json => { name => 'x' });
    is $res->status, 200;
    is_deeply $res->json, { received => { name => 'x' }, status => 'ok' };

    $client->post('/login', form => { user => 'ann', password => 'secret' });
    is $client->get('/me')->text, 'ann';            # the session cookie went back

    $client->post('/upload', multipart => [
        title => 'Report',
        file  => { filename => 'r.csv', content => "a,b\n", content_type => 'text/csv' },
    ]);

    my $ws = $client->websocket('/chat');
    $ws->send_text('hi');
    is $ws->receive, 'Someone said: hi';
    $ws->close;

    my $sse = $client->sse('/feed');
    is $sse->next_event->{data}, 'first';
    $sse->close;

    $client->stop;                                  # lifespan.shutdown
    done_testing;

=head1 DESCRIPTION

Calls a PAGI application (an C<async sub ($scope, $receive, $send)>,
PAGI-SPEC section 1) directly, on an L<IO::Async> loop, with the scopes
and events L<PAGI::Server> would give it: C<http>, C<websocket>, C<sse>
and C<lifespan>. No port is bound and nothing is parsed from the wire, so
a test is fast and its failures point at the app. Methods are
synchronous: each runs the loop until the app answered, bounded by
L</timeout>.

The scope follows PAGI-SPEC 2.1 as PAGI::Server builds it: C<type>,
C<pagi> (C<version> and C<spec_version> C<0.3>), C<http_version>,
C<method> (not in websocket scopes), C<scheme>, C<path> (percent-decoded,
then UTF-8 decoded when valid), C<raw_path>, C<query_string>,
C<root_path>, C<headers> (C<[[lower-case name, value], ...]>, with a
C<host> header, and every cookie in one C<cookie> pair), C<client>,
C<server>, C<state> (a shallow copy of the lifespan state) and
C<extensions>. http scopes carry C<pagi.connection>; websocket scopes
C<subprotocols> and the C<websocket.http.response> extension. No
C<pagi.transport> is given (there is no socket to measure).

Every event the app sends is checked as the server checks it (known
type, required fields and their types, order, header bytes without CR,
LF or NUL): a bad one fails the app's C<$send> and makes the client method
croak, naming the event and the field, even when the app caught the
failure. Paths, query values and form values are text (characters,
sent as UTF-8); header values and bodies are bytes.

Response headers are reported as the app sent them: the client adds no
C<Date>, C<Server>, C<Content-Length> or framing, and a C<HEAD> response
has an empty body, as on the wire.

=head1 OPTIONS

Given to L</new>.

=head2 app

The PAGI application. Required.

=head2 lifespan

    lifespan => 0

With 1 (the default) the app's lifespan scope is started by the first
request (or L</start>) and shut down by L</stop> or when the client is
destroyed. An app that dies on the lifespan scope, or returns without
answering, does not do lifespan and is served without it, as by
PAGI::Server in C<auto> mode. With 0 the app never sees a lifespan scope.

=head2 scheme

C<http> (default) or C<https>. WebSocket scopes get C<ws> or C<wss>;
C<Secure> cookies are only sent over C<https>.

=head2 server, client

    server => ['127.0.0.1', 5000], client => ['127.0.0.1', 40000]

The scope's C<server> and C<client>; these are the defaults. C<< client
=> undef >> leaves the key out, as for a Unix-socket connection. The
C<Host> header is C<server>'s host, with the port unless it is the
scheme's default.

=head2 root_path

The scope's C<root_path>, defaults to C<"">.

=head2 headers

    headers => { 'User-Agent' => 'test' }     # or [[name, value], ...] or [name => value, ...]

Headers sent with every request; a request's own C<headers> replace those
of the same name.

=head2 http_version

C<1.0>, C<1.1> (default) or C<2>.

=head2 extensions

Extra C<extensions> for every scope, e.g. C<< { fullflush => {} } >>
(then C<http.fullflush> is accepted). Defaults to C<{}>.

=head2 timeout

Seconds any one wait may take (a response, a handshake, a message, an
event, lifespan), defaults to C<10>. Most methods take a C<timeout> of
their own. A timeout croaks, saying what the app had done so far.

=head2 chunk_size

Deliver request bodies in C<http.request> events of at most this many
bytes (C<more =E<gt> 1> on all but the last). Default: one event.

=head2 raise_app_errors

With 1 (the default) an app exception croaks in the test, with its
message, and so does an app that returns without a complete response.
With 0 the client answers as PAGI::Server would: a C<500> before the
response started (and a 500 handshake status for websocket and sse); a
response cut short is returned with its L<error|PAGI::Test::Client::Response/error>.

=head2 loop

The L<IO::Async::Loop> to run on; defaults to C<< IO::Async::Loop->new >>
(the process's loop, which the app's own timers use too).

=head1 METHODS

=head2 new

    my $client = PAGI::Test::Client->new(app => $app, %options);

Croaks on a missing app, an unknown option or a bad value, naming it.

=head2 get, post, put, patch, delete, head, options, request

    my $res = $client->get($path, %o);
    my $res = $client->request('PROPFIND', $path, %o);

Runs one HTTP request and returns a L<PAGI::Test::Client::Response>.
C<$path> starts with C</> and may carry a query string. Options:

=over

=item headers

C<[[name, value], ...]>, C<[name =E<gt> value, ...]> or a hash (array
values repeat the header).

=item query

A hash (sorted by key; array values repeat the key), an array of pairs,
or a string; appended to any query in C<$path>.

=item json

Data sent as a JSON body (UTF-8, sorted keys), C<Content-Type:
application/json>.

=item form

A hash or array of pairs sent as C<application/x-www-form-urlencoded>.

=item multipart

C<[name =E<gt> value, name =E<gt> { filename, content, content_type },
...]> sent as C<multipart/form-data>. A file part may give C<path> (a
file to read) instead of C<content>; C<content_type> defaults to
C<application/octet-stream>.

=item body

Raw body bytes (characters above 255 croak).

=item cookies

A hash of extra cookies for this request only, sent with the jar's.

=item chunk_size, timeout

As the client options, for this request.

=back

C<Content-Length> is set for a body (and for POST, PUT and PATCH without
one). The body reaches the app as C<http.request> events; once the
response is complete, C<$receive> gives C<http.disconnect>. The client
then waits for the app to return. C<Set-Cookie> headers of the response
go into the cookie jar.

=head2 websocket

    my $ws = $client->websocket($path, subprotocols => ['chat'], headers => {...}, query => {...});

Opens a WebSocket session (see L<PAGI::Test::Client::WebSocket>): delivers
C<websocket.connect> with the handshake headers and returns once the app
accepted or refused. A refused session comes back with C<accepted> false
and the HTTP C<status> a client would have seen.

=head2 sse

    my $sse = $client->sse($path, last_event_id => 7, method => 'GET', headers => {...});

Opens a Server-Sent Events stream (see L<PAGI::Test::Client::SSE>), with
C<Accept: text/event-stream>. Takes C<query>, C<cookies> and a body
(C<json>, C<form>, C<body>) like the HTTP methods. Returns the stream
once the app sent C<sse.start>, or a L<PAGI::Test::Client::Response>
when the app declined with C<sse.http.response.*>.

=head2 start

    $client->start;

Runs C<lifespan.startup> now (otherwise the first request does). Croaks
with C<Lifespan startup failed: MESSAGE> when the app sends
C<lifespan.startup.failed>; later requests then croak too.

=head2 stop

    $client->stop;

Runs C<lifespan.shutdown> and waits for the app's answer; croaks with
C<Lifespan shutdown failed: MESSAGE> on C<lifespan.shutdown.failed>. A
later request starts a new lifespan. Called when the client is
destroyed (errors are then warnings).

=head2 cookie_jar, cookie, cookies

The L<PAGI::Test::Client::Cookies> jar; C<cookie($name)> is the value of
one cookie, C<cookies> a hash of all of them.

=head2 state

The lifespan C<state> hash (request scopes get a shallow copy).

=head2 app, loop, timeout

The options given.

=head1 SEE ALSO

L<PAGI::Test::Client::Response>, L<PAGI::Test::Client::WebSocket>,
L<PAGI::Test::Client::SSE>, L<PAGI::Test::Client::Cookies>,
L<PAGI::Server>, PAGI-SPEC sections 2 to 4.

=cut
