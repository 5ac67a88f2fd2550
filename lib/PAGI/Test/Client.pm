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
