package PAGI::Simple;
use v5.36;
use Carp ();
use Future;
use Future::AsyncAwait;
use Scalar::Util qw(blessed);
use PAGI::Simple::Router;
use PAGI::Simple::Context;
use PAGI::Simple::PubSub;
use PAGI::Simple::WebSocket;
use PAGI::Simple::SSE;

our $VERSION = '0.01';

# `use PAGI::Simple` gives the caller strict, warnings and signatures, so an
# app file can be written exactly like the announcement.
sub import {
    require strict; require warnings; require feature;
    strict->import;
    warnings->import;
    feature->import('signatures');
    warnings->unimport('experimental::signatures');
}

sub new ($class, %o) {
    my %known = map { $_ => 1 } qw(name mode max_body_size max_upload_size trailing_slash pubsub secrets);
    for (sort keys %o) { Carp::croak("PAGI::Simple->new: unknown option '$_'") unless $known{$_} }
    my $mode = $o{mode} // $ENV{PAGI_ENV} // 'production';
    my $ts = $o{trailing_slash} // 'strict';
    Carp::croak("PAGI::Simple->new: option 'trailing_slash' must be 'strict' or 'redirect'") unless $ts =~ /\A(?:strict|redirect)\z/;
    for my $k (qw(max_body_size max_upload_size)) {
        Carp::croak("PAGI::Simple->new: option '$k' must be a non-negative integer")
            if defined $o{$k} && $o{$k} !~ /\A\d+\z/;
    }
    my $self = bless {
        name => $o{name} // 'PAGI::Simple', mode => $mode, trailing_slash => $ts,
        max_body_size => $o{max_body_size} // 1024 * 1024, max_upload_size => $o{max_upload_size} // 10 * 1024 * 1024,
        router => PAGI::Simple::Router->new, ws_router => PAGI::Simple::Router->new, sse_router => PAGI::Simple::Router->new,
        mounts => [], hooks => { before => [], after => [] }, middleware => {}, errors => {},
        lifespan => { startup => [], shutdown => [] }, stash => {}, wrappers => [], group => [ { prefix => '', mw => [] } ],
        pubsub => $o{pubsub}, pubsub_given => defined $o{pubsub} ? 1 : 0, groups_ext => 0,
    }, $class;
    $self->sessions(secrets => $o{secrets}) if $o{secrets};
    return $self;
}

sub name ($self)   { $self->{name} }
sub mode ($self)   { $self->{mode} }
sub stash ($self)  { $self->{stash} }
sub router ($self) { $self->{router} }
sub pubsub ($self) { $self->{pubsub} //= PAGI::Simple::PubSub->instance }

# A scope with the server's groups extension: unless the app was given a
# backend, $app->pubsub becomes the hub's PAGI::Simple::PubSub::Server
# (lifespan scopes carry no extensions, so the first http, websocket or sse
# scope decides). What was subscribed on the in-memory default moves over.
sub _use_groups ($self, $ext) {
    $self->{groups_ext} = $ext;
    my $hub = ref $ext eq 'HASH' && $ext->{hub} or return;
    require PAGI::Simple::PubSub::Server;
    my $old = $self->{pubsub};
    my $new = $self->{pubsub} = PAGI::Simple::PubSub::Server->for_hub($hub);
    $new->_adopt($old) if $old && $old != $new && $old->isa('PAGI::Simple::PubSub::Memory');
    return;
}

# The backend whose engine groups this scope's connection joins, or undef
# (the in-memory path: no extension, or the app's backend is not on its hub).
sub _groups_for ($self, $scope) {
    my $ext = $scope->{extensions} && $scope->{extensions}{groups} or return undef;
    my $backend = $self->{pubsub};
    return undef unless blessed($backend) && $backend->isa('PAGI::Simple::PubSub::Server');
    return ref $ext eq 'HASH' && $ext->{hub} && $backend->hub == $ext->{hub} ? $backend : undef;
}
sub is_development ($self) { $self->{mode} eq 'development' }

# --- routes ---

sub _args ($self, $what, @args) {
    my $handler = pop @args;
    Carp::croak("$what: the handler must be a code reference") unless ref $handler eq 'CODE';
    my (@mw, %opt);
    for my $a (@args) {
        if (ref $a eq 'ARRAY') { push @mw, @$a }
        elsif (ref $a eq 'HASH') { %opt = (%opt, %$a) }
        else { Carp::croak("$what: expected [\\\@middleware] or {options} before the handler, got '$a'") }
    }
    return ($handler, \@mw, \%opt);
}

sub _full_path ($self, $path) {
    my $prefix = join '', map { $_->{prefix} } @{ $self->{group} };
    my $full = $prefix . $path;
    $full = $prefix if $path eq '/' && length $prefix;
    return $full;
}

sub route ($self, $method, $path, @args) {
    my ($handler, $mw, $opt) = $self->_args("route $method $path", @args);
    my %known = map { $_ => 1 } qw(name raw_body);
    for (keys %$opt) { Carp::croak("route $method $path: unknown option '$_'") unless $known{$_} }
    $self->{router}->add($method, $self->_full_path($path), $handler,
        mw => [ (map { @{ $_->{mw} } } @{ $self->{group} }), @$mw ], %$opt);
    return $self;
}

for my $m (qw(get post put patch delete head options)) {
    my $method = uc $m;
    no strict 'refs';
    *{$m} = sub ($self, $path, @args) { $self->route($method, $path, @args) };
}
sub del ($self, @a) { $self->route(DELETE => @a) }
sub any ($self, @a) { $self->route('*' => @a) }

sub group ($self, $prefix, @args) {
    my ($body, $mw) = $self->_args("group $prefix", @args);
    Carp::croak("group: prefix '$prefix' must start with '/' and not end with '/'") unless $prefix =~ m{\A/.*[^/]\z}s;
    push @{ $self->{group} }, { prefix => $prefix, mw => $mw };
    my $ok = eval { $body->($self); 1 };
    my $err = $@;
    pop @{ $self->{group} };
    die $err unless $ok;
    return $self;
}

sub websocket ($self, $path, @args) {
    my ($handler, $mw, $opt) = $self->_args("websocket $path", @args);
    $self->{ws_router}->add('*', $self->_full_path($path), $handler, %$opt);
    $self;
}

sub sse ($self, $path, @args) {
    my ($handler, $mw, $opt) = $self->_args("sse $path", @args);
    $self->{sse_router}->add('*', $self->_full_path($path), $handler, %$opt);
    $self;
}

sub mount ($self, $prefix, $app) {
    Carp::croak("mount: prefix '$prefix' must start with '/' and not end with '/'") unless $prefix =~ m{\A/.*[^/]\z}s;
    $app = $app->to_app if blessed($app) && $app->can('to_app');
    Carp::croak("mount $prefix: expected a PAGI app (code reference) or an object with to_app") unless ref $app eq 'CODE';
    push @{ $self->{mounts} }, [ $self->_full_path($prefix), $app ];
    @{ $self->{mounts} } = sort { length $b->[0] <=> length $a->[0] } @{ $self->{mounts} };
    $self;
}

# Files under a prefix, tried when no route matched (PAGI::Simple::Static).
sub static ($self, $prefix, $spec) {
    Carp::croak("static: prefix '$prefix' must start with '/'") unless $prefix =~ m{\A/};
    $prefix =~ s{/+\z}{} if $prefix ne '/';
    $prefix = $self->_full_path($prefix);
    require PAGI::Simple::Static;
    push @{ $self->{statics} }, PAGI::Simple::Static->new($prefix, $spec);
    @{ $self->{statics} } = sort { length $b->prefix <=> length $a->prefix } @{ $self->{statics} };
    $self;
}

# Publishing to SSE channels from anywhere (an HTTP route, a timer).
sub sse_publish ($self, $channel, $data, %opt) {
    $self->pubsub->publish("sse:$channel", PAGI::Simple::SSE::_message($data, %opt));
}

sub url_for ($self, $name, $params = {}) { $self->{router}->url_for($name, $params) }

sub hook ($self, $when, $cb) {
    Carp::croak("hook: unknown hook '$when' (before or after)") unless $self->{hooks}{$when};
    push @{ $self->{hooks}{$when} }, $cb;
    $self;
}

sub middleware ($self, $name, $cb) { $self->{middleware}{$name} = $cb; $self }
sub get_middleware ($self, $name) { $self->{middleware}{$name} }
sub has_middleware ($self, $name) { exists $self->{middleware}{$name} ? 1 : 0 }

sub use ($self, $wrapper) {
    Carp::croak('use: expected a PAGI middleware (sub ($app) { return $wrapped_app })') unless ref $wrapper eq 'CODE' || (blessed($wrapper) && $wrapper->can('wrap'));
    push @{ $self->{wrappers} }, $wrapper;
    $self;
}

sub error ($self, $code, $cb) { $self->{errors}{$code} = $cb; $self }
sub get_error_handler ($self, $code) { $self->{errors}{$code} }

sub on ($self, $event, $cb) {
    Carp::croak("on: unknown event '$event' (startup or shutdown)") unless $self->{lifespan}{$event};
    push @{ $self->{lifespan}{$event} }, $cb;
    $self;
}

sub sessions ($self, %o) {
    require PAGI::Simple::Session;
    $self->{sessions} = PAGI::Simple::Session->new(%o);
    $self;
}

sub _session_manager ($self) {
    $self->{sessions} // die "PAGI::Simple: \$c->session needs session secrets: \$app->sessions(secrets => [...]) or PAGI::Simple->new(secrets => [...])\n";
}

# --- the PAGI app ---

sub to_app ($self) {
    # A plain sub handing back the handler's Future: one async frame fewer per request.
    # A plain sub rather than an async one, so the usual request needs no
    # async frame; errors still come back as a failed Future, as from an async sub.
    my $app = sub ($scope, $receive, $send) {
        if (!$self->{pubsub_given} and my $ext = $scope->{extensions} && $scope->{extensions}{groups}) {
            $self->_use_groups($ext) if $ext != $self->{groups_ext};
        }
        my $f = eval {
            my $type = $scope->{type} // '';
            $type eq 'http'        ? $self->_http($scope, $receive, $send)
            : $type eq 'websocket' ? $self->_websocket($scope, $receive, $send)
            : $type eq 'sse'       ? $self->_sse($scope, $receive, $send)
            : $type eq 'lifespan'  ? $self->_lifespan($scope, $receive, $send)
            :                        die "Unsupported scope type '$type'\n";
        };
        return $f // Future->fail($@);
    };
    for my $w (reverse @{ $self->{wrappers} }) {
        $app = ref $w eq 'CODE' ? $w->($app) : $w->wrap($app);
    }
    return $app;
}

async sub _lifespan ($self, $scope, $receive, $send) {
    while (1) {
        my $ev = await $receive->();
        my $type = $ev->{type} // '';
        if ($type eq 'lifespan.startup') {
            my $ok = eval { $_->($self) for @{ $self->{lifespan}{startup} }; 1 };
            if ($ok) { await $send->({ type => 'lifespan.startup.complete' }) }
            else { await $send->({ type => 'lifespan.startup.failed', message => "$@" }); return }
        }
        elsif ($type eq 'lifespan.shutdown') {
            for my $cb (@{ $self->{lifespan}{shutdown} }) { eval { $cb->($self); 1 } or warn "shutdown hook failed: $@" }
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
        else { return }
    }
}

# The path inside this app: scope path minus root_path.
sub _app_path ($scope) {
    my $path = $scope->{path} // '/';
    my $root = $scope->{root_path} // '';
    if (length $root && substr($path, 0, length $root) eq $root) {
        $path = substr($path, length $root);
        $path = "/$path" unless $path =~ m{\A/};
    }
    return $path;
}

sub _mounted ($self, $scope, $path) {
    return unless @{ $self->{mounts} };
    for my $m (@{ $self->{mounts} }) {
        my ($prefix, $app) = @$m;
        next unless $path eq $prefix || substr($path, 0, length($prefix) + 1) eq "$prefix/";
        return ($app, { %$scope, root_path => ($scope->{root_path} // '') . $prefix });
    }
    return;
}

# Reads the whole body up to the limit. Returns (body, undef), or (undef,
# 413) when it is too big, or (undef, undef, $future) when the body is not
# there yet: the Future gives the first two.
sub _read_body ($self, $scope, $receive) {
    # The limit depends on the content type; one pass finds it and the declared length.
    my ($type, $declared) = ('');
    for (@{ $scope->{headers} || [] }) {
        my $name = lc $_->[0];
        if    ($name eq 'content-type')   { $type = $_->[1] }
        elsif ($name eq 'content-length') { $declared = $_->[1] }
    }
    my $limit = $type =~ m{\Amultipart/}i ? $self->{max_upload_size} : $self->{max_body_size};
    return (undef, 413) if defined $declared && $declared =~ /\A\d+\z/ && $limit && $declared > $limit;
    # The usual case: the server hands over the whole body at once, in a
    # Future that is already done, and no event loop round trip is needed.
    my $first = $receive->();
    if ($first->is_done) {
        my $ev = $first->get;
        return ('', undef) unless ($ev->{type} // '') eq 'http.request';
        my $body = $ev->{body} // '';
        return (undef, 413) if $limit && length $body > $limit;
        return ($body, undef) unless $ev->{more};
        return (undef, undef, $self->_read_body_rest($receive, $limit, $body));
    }
    return (undef, undef, $self->_read_body_rest($receive, $limit, '', $first));
}

async sub _read_body_rest ($self, $receive, $limit, $body, $next = undef) {
    while (1) {
        my $ev = await($next // $receive->());
        $next = undef;
        last unless ($ev->{type} // '') eq 'http.request';
        $body .= $ev->{body} // '';
        return (undef, 413) if $limit && length $body > $limit;
        last unless $ev->{more};
    }
    return ($body, undef);
}

# The usual request finishes without waiting for anything: the body came
# with the request, the handler sent its response at once and the server
# took it. That case runs here without an async frame; anything else goes on
# in _http_run.
sub _http ($self, $scope, $receive, $send) {
    my $path = _app_path($scope);
    if (@{ $self->{mounts} } and my ($app, $inner) = $self->_mounted($scope, $path)) {
        return _call_mounted($app, $inner, $receive, $send);
    }
    my $method = $scope->{method} // 'GET';
    my $match = $self->{router}->match($method, $path);
    my $c = PAGI::Simple::Context->_for_request($self, $scope, $receive, $send, $path,
        $match && $match->{params} ? $match->{params} : {});
    my $route = $match && $match->{route};
    return $self->_http_run($c, $match)
        if !$route || $route->{raw_body} || @{ $route->{mw} } || @{ $self->{hooks}{before} }
        || ($self->{sessions} && $self->{sessions}{async_store} && $self->{sessions}->needs_preload($c));
    my @read = $self->_read_body($scope, $receive);
    return $self->_http_run($c, $match, \@read) if !defined $read[0];
    $c->{req_body} = $read[0];
    my $r;
    my $ok = eval { $r = $route->{handler}->($c); 1 };
    # A copy: passed as $@ itself, the alias would be cleared on the way in.
    my $err = $ok ? undef : $@;
    my $waits = blessed($r) && $r->isa('Future') && !$r->is_done;
    return Future->done if $ok && !$waits && $c->{started} && !@{ $self->{hooks}{after} } && !_any_pending($c);
    return $self->_http_after($c, $method, $path, $ok ? $r : undef, $err);
}

async sub _call_mounted ($app, $scope, $receive, $send) {
    return await $app->($scope, $receive, $send);
}

# $read: what _read_body returned, when the caller already called it.
async sub _http_run ($self, $c, $match, $read = undef) {
    my $r;
    my $ok = eval {
        if ($match && $match->{route}) {
            my $route = $match->{route};
            unless ($route->{raw_body}) {
                my ($body, $too_big, $later) = $read ? @$read : $self->_read_body($c->{scope}, $c->{receive});
                ($body, $too_big) = await $later if $later;
                PAGI::Simple::Abort->throw(413) if $too_big;
                $c->{req_body} = $body;
                $c->{req}{body} = $body if $c->{req};
            }
            # An async session store: the session is there before the handler asks.
            my $sessions = $self->{sessions};
            await $sessions->preload($c) if $sessions && $sessions->{async_store} && $sessions->needs_preload($c);
            if (@{ $route->{mw} } || @{ $self->{hooks}{before} }) {
                await $self->_run_route($c, $route);
            }
            else {
                # No hooks or middleware: call the handler here, without a chain to build.
                $r = $route->{handler}->($c);
            }
        }
        else {
            await $self->_unmatched($c, $match);
        }
        1;
    };
    my $err = $ok ? undef : $@;    # a copy, as in _http
    await $self->_http_after($c, $c->{scope}{method} // 'GET', $c->{app_path}, $r, $err);
    return;
}

# The end of every request: the handler's own Future, errors, sends still in
# flight, the after hooks. $err is set when the handler died.
async sub _http_after ($self, $c, $method, $path, $r, $err) {
    my $ok = !defined $err;
    if ($ok && blessed($r) && $r->isa('Future')) {
        $ok = eval { await $r; 1 };
        $err = $@ unless $ok;
    }
    await $self->_handle_error($c, $err) unless $ok;
    eval { await Future->wait_all(@{ $c->{pending} }) if _any_pending($c); 1 };
    if (!$c->{started}) {
        # A handler that sent nothing is a bug in the app: say so instead of hanging the client.
        await $self->_handle_error($c, "handler for $method $path returned without sending a response\n");
    }
    for my $cb (@{ $self->{hooks}{after} }) { eval { my $r = $cb->($c); await $r if blessed($r) && $r->isa('Future'); 1 } or warn "after hook failed: $@" }
    await Future->wait_all(@{ $c->{pending} }) if _any_pending($c);
    return;
}

# Whether a send the handler started is still in flight (done ones need no wait).
sub _any_pending ($c) {
    for (@{ $c->{pending} }) { return 1 unless $_->is_ready }
    return 0;
}

# No route: the trailing-slash redirect when enabled, else 405 or 404.
async sub _unmatched ($self, $c, $match) {
    my $scope = $c->scope;
    my ($method, $path) = ($scope->{method} // 'GET', $c->{app_path});
    if ($self->{trailing_slash} eq 'redirect' && $method =~ /\A(?:GET|HEAD)\z/ && $path ne '/') {
        my $other = $path =~ m{/\z} ? $path =~ s{/+\z}{}r : "$path/";
        my $m2 = $self->{router}->match($method, $other);
        if ($m2 && $m2->{route}) {
            my $qs = length($scope->{query_string} // '') ? "?$scope->{query_string}" : '';
            return await $c->redirect(($scope->{root_path} // '') . $other . $qs, 301);
        }
    }
    if ($match && $match->{allowed}) {
        $c->header(allow => join ', ', @{ $match->{allowed} });
        PAGI::Simple::Abort->throw(405);
    }
    for my $static (@{ $self->{statics} || [] }) {
        my $rest = $static->below($path) // next;
        my $send = $c->send;
        return await $static->serve($scope, $c->receive, sub { $c->mark_response_started; $send->(@_) }, $rest);
    }
    PAGI::Simple::Abort->throw(404);
}

async sub _maybe_await ($value) {
    return await $value if blessed($value) && $value->isa('Future');
    return $value;
}

async sub _run_route ($self, $c, $route) {
    for my $cb (@{ $self->{hooks}{before} }) {
        await _maybe_await(scalar $cb->($c));
        return if $c->{started};
    }
    my @chain = map {
        ref $_ eq 'CODE' ? $_ : ($self->{middleware}{$_} // die "route $route->{method} $route->{path}: unknown middleware '$_'\n")
    } @{ $route->{mw} };
    my $run;
    $run = async sub ($i) {
        if ($i < @chain) {
            my $next_f;
            my $next = sub { $next_f //= $run->($i + 1) };
            await _maybe_await(scalar $chain[$i]->($c, $next));
            # Middleware that called $next without returning it still waits for the rest.
            await $next_f if $next_f;
            return;
        }
        await _maybe_await(scalar $route->{handler}->($c));
    };
    await $run->(0);
    undef $run;
}

async sub _handle_error ($self, $c, $err) {
    my ($code, $message) = (500, undef);
    if (blessed($err) && $err->isa('PAGI::Simple::Abort')) { ($code, $message) = ($err->code, $err->message) }
    else { warn "PAGI::Simple: error in $self->{name} handling " . ($c->scope->{method} // '') . " " . $c->path . ": $err" }
    if ($c->{started}) { return }    # too late for an error page; the server closes the connection
    $c->{status} = $code;
    $c->{res_headers} = [ grep { $_->[0] eq 'allow' || $_->[0] eq 'content-range' } @{ $c->{res_headers} } ];
    if (my $h = $self->{errors}{$code}) {
        my $ok = eval { await _maybe_await(scalar $h->($c, $code == 500 ? $err : $message)); 1 };
        return if $ok && $c->{started};
        warn "error handler for $code failed: $@" unless $ok;
        return if $c->{started};
    }
    my $text = PAGI::Simple::Context->status_text($code);
    if ($code == 500 && $self->is_development) {
        my $esc = sub ($s) { $s =~ s/([&<>"'])/'&#' . ord($1) . ';'/ger };
        my $req = ($c->scope->{method} // '') . ' ' . ($c->scope->{path} // '');
        await $c->html("<!DOCTYPE html>\n<html><head><title>500 Internal Server Error</title></head><body>\n"
            . "<h1>500 Internal Server Error</h1>\n<p>" . $esc->($self->{name}) . ' (development mode) failed on <code>' . $esc->($req) . "</code>:</p>\n"
            . '<pre>' . $esc->("$err") . "</pre>\n</body></html>\n", 500);
        return;
    }
    await $c->text(defined $message && length $message ? "$text: $message" : $text, $code);
}

async sub _websocket ($self, $scope, $receive, $send) {
    my $path = _app_path($scope);
    if (my ($app, $inner) = $self->_mounted($scope, $path)) { return await $app->($inner, $receive, $send) }
    my $match = $self->{ws_router}->match('GET', $path);
    unless ($match && $match->{route}) {
        my $ev = await $receive->();
        await $send->({ type => 'websocket.close', code => 4004, reason => 'Not Found' });
        return;
    }
    my $ws = PAGI::Simple::WebSocket->new(app => $self, scope => $scope, receive => $receive, send => $send,
        path_params => $match->{params}, route_key => $match->{route}{path}, groups => $self->_groups_for($scope));
    await $ws->run($match->{route}{handler});
}

async sub _sse ($self, $scope, $receive, $send) {
    my $path = _app_path($scope);
    if (my ($app, $inner) = $self->_mounted($scope, $path)) { return await $app->($inner, $receive, $send) }
    my $match = $self->{sse_router}->match('GET', $path);
    unless ($match && $match->{route}) {
        await $send->({ type => 'sse.http.response.start', status => 404,
            headers => [ [ 'content-type', 'text/plain; charset=utf-8' ] ] });
        await $send->({ type => 'sse.http.response.body', body => 'Not Found', more => 0 });
        return;
    }
    my $sse = PAGI::Simple::SSE->new(app => $self, scope => $scope, receive => $receive, send => $send,
        path_params => $match->{params}, groups => $self->_groups_for($scope));
    await $sse->run($match->{route}{handler});
}

1;
__END__

=head1 NAME

PAGI::Simple - a small Express-style framework on top of PAGI

=head1 SYNOPSIS

    use PAGI::Simple;
    my $app = PAGI::Simple->new(name => 'My API');
    $app->get('/' => sub ($c) { $c->text('Hello, World!') });
    $app->get('/users/:id' => sub ($c) { my $id = $c->path_params->{id}; $c->json({ user_id => $id }) });
    $app->post('/api/data' => sub ($c) { my $data = $c->json_body; $c->json({ received => $data, status => 'ok' }) });
    $app->websocket('/chat' => sub ($ws) {
        $ws->on(message => sub ($data) { $ws->broadcast("Someone said: $data") });
    });
    $app->to_app;

    # pagi-server --app app.pl --port 5000

=head1 DESCRIPTION

C<< $app->to_app >> returns a plain PAGI application (an C<async sub ($scope,
$receive, $send)>), so it runs on any conforming PAGI server. It handles the
C<http>, C<websocket>, C<sse> and C<lifespan> scope types and dies
C<Unsupported scope type> on others.

C<use PAGI::Simple> turns on C<strict>, C<warnings> and subroutine signatures
(without the experimental warning) in the file that uses it, so the code
above runs as written.

Handlers are plain subs or async subs; a returned Future is awaited, and so
is every response Future a plain handler started without returning it.

=head1 CONSTRUCTOR

    PAGI::Simple->new(%options)

=over

=item name => 'PAGI::Simple'

=item mode => $ENV{PAGI_ENV} // 'production'

C<development> shows exception details on 500 pages; anything else shows
only C<Internal Server Error>.

=item max_body_size => 1048576

Request bodies (other than multipart) are read completely before the handler
runs, up to this many bytes; a larger one gets C<413 Payload Too Large> (from
C<Content-Length> before reading, or as soon as the bytes pass the limit).
0 means no limit.

=item max_upload_size => 10485760

The same for C<multipart/form-data>; uploads are spooled to temporary files.

=item trailing_slash => 'strict'

C<strict>: C</a> and C</a/> are different paths (404 when only the other one
exists). C<redirect>: a GET or HEAD that matches no route but would match
with the trailing slash added or removed gets C<301> to that path (query kept).

=item pubsub => $backend

The L<PAGI::Simple::PubSub> backend for rooms and channels. Without it the
app picks one itself (see L</ROOMS AND CHANNELS ACROSS WORKERS>): the
server's hub as L<PAGI::Simple::PubSub::Server> once a request scope
carries the C<groups> extension, else the per-process
L<PAGI::Simple::PubSub::Memory> instance. A backend given here is used as
it is (WebSocket rooms and SSE channels then go through its callbacks, in
Perl, unless it is a L<PAGI::Simple::PubSub::Server> on the scope's hub).

=item secrets => [ ... ]

Shortcut for C<< $app->sessions(secrets => [...]) >>.

=back

Unknown options die naming the option.

=head1 ROUTES

    $app->get($path, [\@middleware], [\%options], $handler);   # also post put patch delete head options
    $app->del(...);                 # alias of delete
    $app->any($path, ...);          # every method
    $app->route($METHOD, $path, ...);

Each returns C<$app>. Path syntax (see L<PAGI::Simple::Router>): C<:name> is
one segment, C<< :name<REGEX> >> one segment matching REGEX (the constraint:
C<< '/users/:id<\d+>' >>), C<*name> the rest of the path (last segment only,
may be empty). Routes are tried in order; the first match wins, so a failed
constraint falls through to later routes. Path parameters are in
C<< $c->path_params >>.

Options: C<< name => 'user' >> (for L</url_for>), C<< raw_body => 1 >> (the
framework does not read the body; the handler reads it with
C<< await $c->req->receive_body >> or from C<< $c->receive >>).

A request that matches no route gets C<404>; one whose path matches only
routes of other methods gets C<405> with C<Allow> (sorted; C<HEAD> included
when there is a C<GET>). C<HEAD> is answered by C<GET> routes with the same
headers and no body.

=head2 group

    $app->group('/admin' => [ 'auth', sub ($c, $next) { ... } ] => sub ($app) {
        $app->get('/' => ...);          # /admin
        $app->get('/users' => ...);     # /admin/users
    });

Prefixes every route (HTTP, WebSocket, SSE, mount) defined inside and runs
the group's middleware before each route's own; groups nest.

=head2 middleware, route middleware

    $app->middleware(auth => sub ($c, $next) {
        return $c->error(401) unless $c->req->header('authorization');
        return $next->();
    });

Route and group middleware are names registered with C<middleware> or code
references C<sub ($c, $next)>. Calling C<< $next->() >> runs the rest of the
chain (it returns a Future); not calling it ends the request there (after
sending a response). An unknown name dies at dispatch. C<get_middleware>,
C<has_middleware>.

=head2 use

    $app->use(sub ($inner) { async sub ($scope, $receive, $send) { ...; await $inner->(...) } });

Wraps the whole application in PAGI middleware (a sub taking an app and
returning an app, or an object with C<wrap($app)>): the first C<use> is the
outermost.

=head2 mount

    $app->mount('/api/v2' => $other_simple_app_or_pagi_app);
    $app->mount('/legacy' => PAGI::App::WrapPSGI->new(psgi_app => $psgi)->to_app);

Requests whose path is the prefix or starts with C<prefix/> go to the
mounted app with C<root_path> extended by the prefix (C<path> is unchanged,
as PAGI and ASGI define it; a mounted PAGI::Simple app routes on C<path>
minus C<root_path>, and WrapPSGI makes that C<PATH_INFO>). Mounts are
checked before routes, longest prefix first, for all three scope types.

=head2 static

    $app->static('/assets' => 'public');
    $app->static('/docs' => { root => 'share/docs', index => 'index.html', show_hidden => 0 });

Serves the files of a directory under a prefix, tried only when no route
matched (a route, or a 405 for another method, wins). The prefix is
stripped (it joins C<root_path>) and L<PAGI::App::Directory> answers, with
ETag, Last-Modified, Range, conditional GET, listings, and nothing outside
C<root>. C<index> (default C<index.html>; C<undef> lists the directory) is
served for a directory request; names starting with a dot are C<404> unless
C<show_hidden>. See L<PAGI::Simple::Static>.

=head2 url_for

    $app->url_for(user => { id => 7, tab => 'posts' });   # /users/7?tab=posts

The path of a named route: parameters fill C<:name> and C<*name> (escaped),
the rest become the query string. Unknown names and missing parameters die
naming them. C<< $c->url_for >> adds the request's C<root_path>.

=head2 hook, error, on

C<< hook(before => sub ($c) {...}) >> runs before the middleware of every
matched route; if it sent a response the route is skipped.
C<< hook(after => sub ($c) {...}) >> runs after every request (errors are
warned and ignored). C<< error($code => sub ($c, $message_or_error) {...}) >>
renders that status instead of the default C<text/plain> page
(C<get_error_handler>). C<< on(startup => sub ($app) {...}) >> and
C<< on(shutdown => ...) >> run at lifespan startup and shutdown; a startup
hook that dies fails the startup with its message.

=head1 ERRORS

C<< $c->error(404) >> and C<< $c->error(400, 'name is required') >> (also
C<abort>) throw a L<PAGI::Simple::Abort>; the response is
C<< <Status Text> >> or C<< <Status Text>: <message> >> as C<text/plain>,
unless an error handler is registered. Malformed JSON read by C<json_body> is
a 400 whose message says what is wrong. Any other exception is logged and
answered with 500: in development mode an HTML page with the (escaped) error
and the request line, otherwise C<Internal Server Error>. A handler that
finishes without responding also gets a 500 (it is a bug in the app, and the
client should not hang). After a response has started an exception can only
be logged; the server then closes the connection.

=head1 WEBSOCKET AND SSE

    $app->websocket($path => sub ($ws) { ... });   # PAGI::Simple::WebSocket
    $app->sse($path => sub ($sse) { ... });        # PAGI::Simple::SSE
    $app->sse_publish($channel, $data, event => 'news', id => 1);

Same path syntax as HTTP routes. An unknown WebSocket path is closed before
accepting (code 4004, which the server sends as HTTP 403); an unknown SSE path
is declined with a plain C<404> (C<sse.http.response.*>). One-argument
C<< $ws->broadcast($msg) >> reaches every other client of that route;
two-argument C<broadcast($room, $msg)> every other member of the room. Both,
and SSE channels, go through C<< $app->pubsub >>. A reference broadcast to a
room (or the route) is sent as its JSON text.

Presence: C<< $ws->room_count($room) >> and C<< $sse->channel_count($channel) >>
are the members in this process now; C<< $ws->room_cluster_count($room) >>
and C<< $sse->channel_cluster_count($channel) >> are Futures of the count
across every worker and machine (with pagi-server's C<--pubsub
redis://...>; otherwise the local count). The same from anywhere:
C<< $app->pubsub->room_count($room) >>, C<room_cluster_count>,
C<subscribers("sse:$channel")>, C<cluster_subscribers>.

=head1 ROOMS AND CHANNELS ACROSS WORKERS

PAGI::Server advertises the C<groups> extension in every http, websocket
and sse scope (see L<PAGI::Server::Groups>). When an app that was not given
a C<pubsub> backend sees its first such scope, C<< $app->pubsub >> becomes
L<PAGI::Simple::PubSub::Server> on the server's hub (one per process,
shared by the apps in it), and from then on:

=over

=item * C<< $ws->join >> / C<leave>, the route group and C<< $sse->subscribe >> /
C<unsubscribe> are C<groups.join> / C<groups.leave> events on the
connection's own C<$send>: the connection is a member of the engine group
C<room:NAME>, C<ws-route:PATH> or C<sse:NAME> (the names the in-memory hub
uses, so C<< $app->pubsub >> code sees the same channels). The join happens
once the connection is accepted (or the stream started), before the
handler runs; a connection leaves its groups when it ends.

=item * C<broadcast>, C<broadcast_all>, C<broadcast_others>, C<< $sse->publish >>
and C<publish_others> are one C<groups.publish> (with C<exclude_self> for
the sender-excluding ones): the engine encodes the message once and
writes it to every member; Perl does no work per member.
C<< $app->pubsub->publish >>, C<room_send> and C<< $app->sse_publish >>
publish through the hub. With C<--pubsub redis://...> every worker and
machine gets them.

=item * The counts they return are the receivers in this process (members
and Perl subscribers, minus the sender when excluded); other workers'
members are not counted. A publish that fails (Redis unreachable) is
warned about.

=back

Lifespan scopes carry no extensions, so the switch happens on the first
http, websocket or sse scope; subscriptions made through
C<< $app->pubsub >> before it (at load time, in an C<on(startup)> hook) are on
the in-memory hub and move over then, keeping their ids. Without the
extension (another PAGI server, L<PAGI::Test::Client>) the in-memory hub
stays: rooms and channels are per process and delivery runs through Perl
callbacks, as before.

=head1 SESSIONS

    $app->sessions(secrets => [ $newest, @older ], %options);
    ... $c->session->{user_id} = 42;  ... $c->session_clear;

Signed cookie sessions by default, optionally encrypted or kept server-side;
see L<PAGI::Simple::Session>. C<< $c->session >> without configured secrets
dies with a message saying how to configure them. C<< $c->session_clear >>
ends the session: the response expires the cookie, so values set later in
the same request are dropped too (to keep a one-shot "signed out" message,
delete the keys instead of clearing).

A server-side store whose methods return Futures (C<is_async>, such as
L<PAGI::Simple::Session::Store::Redis>, which keeps sessions in Redis through
pagi-server's C<--pubsub> connection so every worker shares them) is awaited
for you: a request with a session cookie has its session loaded before the
handler runs, and a changed session is saved before the response starts
(see L<PAGI::Simple::Session/STORES>).

=head1 DIFFERENCES FROM THE 2025-12 SEED

Body accessors (C<json_body>, C<body_params>, C<param>, C<params>) are
synchronous because bounded bodies are read before the handler runs; text
helpers UTF-8-encode character strings; C<broadcast> excludes the sender and
accepts one argument (the route); C<< $sse->close >> sends C<sse.close>;
unmatched SSE is declined with C<sse.http.response.*> instead of a 404 stream;
C<mount>, sessions and C<url_for> exist.

=cut
