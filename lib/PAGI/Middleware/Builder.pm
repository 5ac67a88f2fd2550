package PAGI::Middleware::Builder;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'Exporter';
use Carp ();
use Future;
use Future::AsyncAwait;
use Scalar::Util ();
use PAGI::Middleware ();

our @EXPORT = qw(builder enable enable_if mount);

=head1 NAME

PAGI::Middleware::Builder - compose PAGI middleware around an app

=head1 SYNOPSIS

    use PAGI::Middleware::Builder;

    my $app = builder {
        enable 'ErrorHandler', development => 1;
        enable 'CORS', origins => ['https://example.com'];
        enable_if { ($_[0]{path} // '') =~ m{^/api/} } 'RateLimit', rate => 10, burst => 20;
        enable '+My::Middleware', option => 1;     # a full class name
        enable sub { my ($app) = @_; return sub { $app->(@_) } };
        $inner_app;                                 # the block's last value
    };

    my $site = builder {
        enable 'AccessLog';
        mount '/api'    => $api_app;                # root_path '/api' in its scope
        mount '/static' => builder { enable 'Gzip'; PAGI::App::File->new(root => 'public')->to_app };
        $default_app;                               # everything else (optional)
    };

=head1 DESCRIPTION

C<builder> runs its block, which calls C<enable> (and C<enable_if>) and
ends with the app; it returns the app wrapped in every enabled middleware.
The first one enabled is the outermost: it sees the request first and the
response last.

=head1 FUNCTIONS

All four are exported by default.

=head2 builder

    my $wrapped = builder { ...; $app };

Croaks when the block's last value is not a code reference. Builders nest.

=head2 enable

    enable 'Name', %options;        # PAGI::Middleware::Name->new(%options)
    enable '+Full::Class', %options;
    enable($middleware_object);    # anything with a wrap($app) method (the
                                    # parentheses keep perl from reading
                                    # "enable Class->new" as a method call)
    enable $code;                   # sub ($app) { ... return $new_app }

Only inside a C<builder> block. A name is loaded with C<require>; a name that
cannot be loaded croaks, saying which.

=head2 enable_if

    enable_if { my ($scope) = @_; ... } 'Name', %options;

Like C<enable>, but the middleware runs only for scopes for which the
condition returns true (it is called with the scope, once per scope); other
scopes go to the next app in the stack without it.

=head2 mount

    mount '/prefix' => $app;

Only inside a C<builder> block. With any C<mount>, the block's app is a
dispatcher: a scope whose path (below its C<root_path>) is the prefix or
starts with it and C</> goes to that app, the longest matching prefix
first, with the prefix appended to C<root_path> in a copy of the scope
(C<path> stays whole, as PAGI-SPEC 2.1 defines it; C<raw_path> too). C<mount
'/'> matches everything. A path no prefix matches goes to the app the block
returns, if it returns one; otherwise an C<http> request gets C<404>, an
C<sse> request a C<404> decline and a WebSocket handshake is closed
(C<403>). The enabled middleware wraps the dispatcher.

A C<lifespan> scope reaches every mounted app (and the block's app): each
gets its startup event with the same C<state> hash; startup completes when
all have completed (apps that decline lifespan are left out) and fails when
one fails, with its message; shutdown goes to each and completes when all
have. When no app supports lifespan, the dispatcher declines it too.

=cut

# The middleware and mounts of the builder blocks being run, innermost last.
my @BUILDING;

sub builder(&) {
    my ($block) = @_;
    push @BUILDING, { middleware => [], mounts => [] };
    my $app = eval { $block->() };
    my $error = $@;
    my $building = pop @BUILDING;
    die $error if $error;
    if (@{ $building->{mounts} }) {
        $app = _dispatcher($building->{mounts}, _is_code($app) ? $app : undef);
    }
    Carp::croak('builder: the block must end with the app (a code reference), got '
        . (defined $app ? (ref $app || "'$app'") : 'undef'))
        unless _is_code($app);
    for my $wrapper (reverse @{ $building->{middleware} }) {
        $app = $wrapper->($app);
        Carp::croak('builder: a middleware returned ' . (ref $app || 'a non-reference') . ', not an app')
            unless _is_code($app);
    }
    return $app;
}

sub enable {
    my ($what, @options) = @_;
    Carp::croak('enable: only inside a builder { } block') unless @BUILDING;
    push @{ $BUILDING[-1]{middleware} }, _wrapper($what, @options);
    return;
}

sub enable_if(&$@) {
    my ($condition, $what, @options) = @_;
    Carp::croak('enable_if: only inside a builder { } block') unless @BUILDING;
    my $wrapper = _wrapper($what, @options);
    push @{ $BUILDING[-1]{middleware} }, sub {
        my ($app) = @_;
        my $with = $wrapper->($app);
        return sub { $condition->($_[0]) ? $with->(@_) : $app->(@_) };
    };
    return;
}

sub mount {
    my ($prefix, $app) = @_;
    Carp::croak('mount: only inside a builder { } block') unless @BUILDING;
    Carp::croak("mount: the prefix must start with '/', got " . ($prefix // 'undef'))
        unless defined $prefix && !ref $prefix && $prefix =~ m{\A/};
    Carp::croak("mount '$prefix': the app must be a code reference") unless _is_code($app);
    $prefix =~ s{/+\z}{};
    Carp::croak("mount: '$prefix' is mounted twice") if grep { $_->[0] eq $prefix } @{ $BUILDING[-1]{mounts} };
    push @{ $BUILDING[-1]{mounts} }, [ $prefix, $app ];
    return;
}

sub _dispatcher {
    my ($mounts, $fallback) = @_;
    my @by_length = sort { length $b->[0] <=> length $a->[0] } @$mounts;
    my @all = ((map { $_->[1] } @by_length), $fallback // ());
    return async sub {
        my ($scope, $receive, $send) = @_;
        return await _lifespan_to_all(\@all, @_) if $scope->{type} eq 'lifespan';
        my $mount = $scope->{root_path} // '';
        my $path = $scope->{path} // '';
        my $rest = substr($path, 0, length $mount) eq $mount ? substr($path, length $mount) : $path;
        for my $entry (@by_length) {
            my ($prefix, $app) = @$entry;
            next unless $prefix eq '' || $rest eq $prefix || substr($rest, 0, length($prefix) + 1) eq "$prefix/";
            return await $app->({ %$scope, root_path => $mount . $prefix }, $receive, $send);
        }
        return await $fallback->($scope, $receive, $send) if $fallback;
        my @not_found = (status => 404, headers => [ [ 'content-type', 'text/plain; charset=utf-8' ], [ 'content-length', 10 ] ]);
        if ($scope->{type} eq 'http') {
            await $send->({ type => 'http.response.start', @not_found });
            return await $send->({ type => 'http.response.body', body => "Not Found\n", more => 0 });
        }
        if ($scope->{type} eq 'sse') {
            await $send->({ type => 'sse.http.response.start', @not_found });
            return await $send->({ type => 'sse.http.response.body', body => "Not Found\n", more => 0 });
        }
        return await $send->({ type => 'websocket.close', code => 1000 }) if $scope->{type} eq 'websocket';
        die "PAGI::Middleware::Builder: unsupported scope type '$scope->{type}'\n";
    };
}

# Runs the lifespan protocol of every app at once, as one app.
async sub _lifespan_to_all {
    my ($apps, $scope, $receive, $send) = @_;
    my $event = await $receive->();
    return unless ($event->{type} // '') eq 'lifespan.startup';
    my @children;
    for my $app (@$apps) {
        my $child = { started => Future->new, stopped => Future->new, shutdown => Future->new, calls => 0 };
        my $child_receive = sub {
            return Future->done({ type => 'lifespan.startup' }) if $child->{calls}++ == 0;
            return $child->{shutdown};
        };
        my $child_send = sub {
            my ($e) = @_;
            my $type = $e->{type} // '';
            if ($type eq 'lifespan.startup.complete' || $type eq 'lifespan.startup.failed') {
                $child->{started}->done($type, $e->{message} // '') unless $child->{started}->is_ready;
            }
            elsif ($type eq 'lifespan.shutdown.complete' || $type eq 'lifespan.shutdown.failed') {
                $child->{stopped}->done($type, $e->{message} // '') unless $child->{stopped}->is_ready;
            }
            return Future->done;
        };
        my $run = eval { $app->({ %$scope }, $child_receive, $child_send) } || Future->fail($@);
        # An app that returns or dies without answering declines lifespan.
        $child->{run} = $run->on_ready(sub {
            $child->{started}->done('declined', '') unless $child->{started}->is_ready;
            $child->{stopped}->done('lifespan.shutdown.complete', '') unless $child->{stopped}->is_ready;
        });
        push @children, $child;
    }
    await Future->wait_all(map { $_->{started} } @children);
    my @answers = map { [ $_->{started}->get ] } @children;
    if (my ($failed) = grep { $_->[0] eq 'lifespan.startup.failed' } @answers) {
        $_->{shutdown}->done({ type => 'lifespan.shutdown' }) for @children;
        return await $send->({ type => 'lifespan.startup.failed', message => $failed->[1] });
    }
    my @running = grep { $_->{started}->get ne 'declined' } @children;
    die "lifespan: no mounted app supports it\n" unless @running;
    await $send->({ type => 'lifespan.startup.complete' });
    $event = await $receive->();
    $_->{shutdown}->done({ type => 'lifespan.shutdown' }) for @running;
    await Future->wait_all(map { $_->{stopped} } @running);
    my ($failed) = grep { $_->[0] eq 'lifespan.shutdown.failed' } map { [ $_->{stopped}->get ] } @running;
    await $send->($failed ? { type => 'lifespan.shutdown.failed', message => $failed->[1] }
                          : { type => 'lifespan.shutdown.complete' });
}

# A sub ($app) → $wrapped_app for what was enabled.
sub _wrapper {
    my ($what, @options) = @_;
    Carp::croak('enable: missing the middleware') unless defined $what;
    if (ref $what eq 'CODE') {
        Carp::croak('enable: options are not taken with a code reference') if @options;
        return $what;
    }
    if (Scalar::Util::blessed($what)) {
        Carp::croak('enable: ' . ref($what) . ' has no wrap method') unless $what->can('wrap');
        return sub { $what->wrap($_[0]) };
    }
    Carp::croak("enable: '$what' is not a middleware name, object or code reference") if ref $what;
    my $class = $what =~ s/\A\+// ? $what : "PAGI::Middleware::$what";
    Carp::croak("enable: '$what' is not a valid module name") unless $class =~ /\A[A-Za-z_]\w*(?:::\w+)*\z/;
    (my $file = "$class.pm") =~ s{::}{/}g;
    eval { require $file; 1 } or Carp::croak("enable: cannot load $class: $@");
    Carp::croak("enable: $class has no new and wrap methods") unless $class->can('new') && $class->can('wrap');
    # Built now: a bad option fails when the builder runs, not on a request.
    my $middleware = $class->new(@options);
    return sub { $middleware->wrap($_[0]) };
}

# A code reference, or an object that overloads calling (PAGI::Middleware's test).
sub _is_code { PAGI::Middleware::_is_code(@_) }

=head1 SEE ALSO

L<PAGI::Middleware> for how a middleware is written.

=cut

1;
