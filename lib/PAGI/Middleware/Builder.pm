package PAGI::Middleware::Builder;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'Exporter';
use Carp ();
use Scalar::Util ();

our @EXPORT = qw(builder enable enable_if);

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

=head1 DESCRIPTION

C<builder> runs its block, which calls C<enable> (and C<enable_if>) and
ends with the app; it returns the app wrapped in every enabled middleware.
The first one enabled is the outermost: it sees the request first and the
response last.

=head1 FUNCTIONS

All three are exported by default.

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

=cut

# The middleware of the builder blocks being run, innermost last.
my @BUILDING;

sub builder(&) {
    my ($block) = @_;
    push @BUILDING, [];
    my $app = eval { $block->() };
    my $error = $@;
    my $stack = pop @BUILDING;
    die $error if $error;
    Carp::croak('builder: the block must end with the app (a code reference), got '
        . (defined $app ? (ref $app || "'$app'") : 'undef'))
        unless _is_code($app);
    for my $wrapper (reverse @$stack) {
        $app = $wrapper->($app);
        Carp::croak('builder: a middleware returned ' . (ref $app || 'a non-reference') . ', not an app')
            unless _is_code($app);
    }
    return $app;
}

sub enable {
    my ($what, @options) = @_;
    Carp::croak('enable: only inside a builder { } block') unless @BUILDING;
    push @{ $BUILDING[-1] }, _wrapper($what, @options);
    return;
}

sub enable_if(&$@) {
    my ($condition, $what, @options) = @_;
    Carp::croak('enable_if: only inside a builder { } block') unless @BUILDING;
    my $wrapper = _wrapper($what, @options);
    push @{ $BUILDING[-1] }, sub {
        my ($app) = @_;
        my $with = $wrapper->($app);
        return sub { $condition->($_[0]) ? $with->(@_) : $app->(@_) };
    };
    return;
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

sub _is_code {
    my ($value) = @_;
    return 1 if ref $value eq 'CODE';
    return Scalar::Util::blessed($value) && overload::Method($value, '&{}') ? 1 : 0;
}

require overload;

=head1 SEE ALSO

L<PAGI::Middleware> for how a middleware is written.

=cut

1;
